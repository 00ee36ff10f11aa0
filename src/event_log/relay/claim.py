"""Step 1, claim: take over a batch whose lease expired, or seal a new one."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from django.db import connection, transaction
from psycopg import sql as pgsql

from event_log import sql
from event_log.conf import EventLogSettings
from event_log.control import CONTROL_ID, RelaysPausedError
from event_log.relay import prepared
from event_log.relay.batch import Batch
from event_log.relay.tracing import step


def claim(config: EventLogSettings) -> Batch | None:
    """Take an expired batch or seal a new one; None when the outbox is empty.

    One short PostgreSQL transaction, durable whatever the session's
    ``synchronous_commit``. ``FOR UPDATE SKIP LOCKED`` lets any number of relays
    claim side by side, each getting a batch of its own. A batch holds at most
    ``BATCH_SIZE`` rows and ``BATCH_MAX_BYTES`` bytes of event context. Raises
    :class:`RelaysPausedError` (and claims nothing) while operators pause relays.
    """
    lease = config.LEASE_SECONDS
    with transaction.atomic(), prepared.cursor() as cur:
        cur.execute(sql.TAKE_EXPIRED_BATCH, {"lease": lease, "control_id": CONTROL_ID})
        paused, batch_id, attempts, first_id, last_id = cur.fetchone()
        if paused:
            raise RelaysPausedError("relays are paused")
        if batch_id is None:
            return seal(cur, config)
        batch = Batch(id=batch_id, attempts=attempts, first_id=first_id, last_id=last_id, block=b"")
        return replace(batch, block=copy_rows(cur, batch))


def seal(cur: Any, config: EventLogSettings) -> Batch | None:
    """Seal up to ``BATCH_SIZE`` new rows (SEAL_BATCH) and copy them out."""
    batch_id = uuid.uuid4()
    cur.execute(
        sql.SEAL_BATCH,
        {
            "batch_id": batch_id,
            "limit": config.BATCH_SIZE,
            "max_bytes": config.BATCH_MAX_BYTES,
            "lease": config.LEASE_SECONDS,
        },
    )
    sealed = cur.fetchone()
    if sealed is None:
        return None
    first_id, last_id = sealed
    batch = Batch(id=batch_id, attempts=1, first_id=first_id, last_id=last_id, block=b"")
    return replace(batch, block=copy_rows(cur, batch))


def copy_rows(cur: Any, batch: Batch, *, only: set[uuid.UUID] | None = None) -> bytes:
    """The batch's rows (or those of ``only``) as TabSeparated text, in id order."""
    statement = pgsql.SQL(sql.COPY_BATCH).format(
        batch_id=pgsql.Literal(batch.id),
        first_id=pgsql.Literal(batch.first_id),
        last_id=pgsql.Literal(batch.last_id),
        only=pgsql.SQL(sql.ONLY_EVENTS).format(event_ids=pgsql.Literal(list(only)))
        if only
        else pgsql.SQL(""),
    )
    with step("copy rows"):
        return copy_out(cur, statement)


def copy_out(cur: Any, statement: pgsql.Composable) -> bytes:
    """What a ``COPY ... TO STDOUT`` sends, as one bytes object."""
    with cur.copy(statement) as copy:
        return b"".join(copy)  # one chunk per row, joined once


def context_bytes(batch: Batch) -> int:
    """The largest event context of the batch, in bytes, as the seal measures it."""
    with connection.cursor() as cur:
        cur.execute(sql.BATCH_CONTEXT_BYTES, batch.keys)
        return int(cur.fetchone()[0])
