"""Step 2, write: one ClickHouse INSERT of the batch under its token."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.conf import EventLogSettings
from event_log.relay.batch import Batch
from event_log.relay.isolate import isolate
from event_log.relay.verify import send_missing, stored_rows


def write(ch: Client, config: EventLogSettings, batch: Batch) -> list[tuple[int, ClickHouseError]]:
    """Insert the batch; returns the positions of rows rejected for their data.

    Raises :class:`ClickHouseError` when the failure is transient.
    """
    if not batch.block:
        return []
    if batch.attempts > 1:
        stored, expected = stored_rows(ch, config, batch)
        if stored == expected:
            return []  # the earlier attempt's INSERT landed
        if stored:
            try:
                send_missing(ch, config, batch, expected - stored)
            except ClickHouseError as error:
                if error.transient:
                    raise
                # Poison among the missing rows: bisect the whole batch, as the
                # first attempt did (its sub-batch tokens deduplicate what landed).
            else:
                return []
    try:
        clickhouse.insert_tsv(
            ch, table=config.CLICKHOUSE_TABLE, block=batch.block, token=str(batch.id)
        )
    except ClickHouseError as error:
        if error.transient:
            raise
        return isolate(ch, config, batch, error)
    if batch.attempts > 1:
        stored, expected = stored_rows(ch, config, batch)
        if stored != expected:
            send_missing(ch, config, batch, expected - stored)
    return []
