"""Re-sent batches: what ClickHouse already holds of a batch, and sending what it lacks."""

from __future__ import annotations

import uuid
from datetime import UTC, timedelta

import structlog
from clickhouse_connect.driver.client import Client
from django.db import connection

from event_log import clickhouse, sql
from event_log.conf import EventLogSettings
from event_log.relay.batch import Batch
from event_log.relay.claim import copy_rows

logger = structlog.get_logger(__name__)


def stored_rows(
    ch: Client, config: EventLogSettings, batch: Batch
) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """For a re-sent batch: which of its event ids ClickHouse holds, and all of them.

    The token alone cannot answer this. A ClickHouse process that died in the
    middle of an INSERT (the embedded engine dies with its relay) can come back
    remembering the token without the rows, which a plain re-send would then
    lose; or holding the rows without the token, which a plain re-send would
    then duplicate. Looking the ids up (through the table's sorting key) settles
    both; first attempts, the common case, skip it.
    """
    with connection.cursor() as cur:
        cur.execute(sql.BATCH_EVENT_RANGE, batch.keys)
        event_types, first_at, last_at = cur.fetchone()
        cur.execute(sql.BATCH_EVENT_IDS, batch.keys)
        expected = {row[0] for row in cur.fetchall()}
    if not expected:
        return set(), expected
    # Naive UTC, widened: the bounds only narrow the scan to the sorting key.
    margin = timedelta(minutes=1)
    result = ch.query(
        sql.STORED_EVENT_IDS.format(table=config.CLICKHOUSE_TABLE),
        parameters={
            "types": tuple(event_types),
            "first_at": first_at.astimezone(UTC).replace(tzinfo=None) - margin,
            "last_at": last_at.astimezone(UTC).replace(tzinfo=None) + margin,
            "ids": tuple(expected),
        },
    )
    return {row[0] for row in result.result_rows} & expected, expected


def send_missing(
    ch: Client, config: EventLogSettings, batch: Batch, missing: set[uuid.UUID]
) -> None:
    """Send rows verifiably absent from ClickHouse, under a token of this attempt."""
    logger.warning("outbox_batch_rows_missing", batch_id=str(batch.id), missing=len(missing))
    with connection.cursor() as cur:
        block = copy_rows(cur, batch, only=missing)
    clickhouse.insert_tsv(
        ch,
        table=config.CLICKHOUSE_TABLE,
        block=block,
        token=f"{batch.id}:attempt-{batch.attempts}",
    )
