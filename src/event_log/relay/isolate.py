"""Poison rows: bisect a batch ClickHouse rejected for its data, deliver the rest."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.conf import EventLogSettings
from event_log.relay.batch import Batch


def isolate(
    ch: Client, config: EventLogSettings, batch: Batch, error: ClickHouseError
) -> list[tuple[int, ClickHouseError]]:
    """Bisect a rejected batch: insert the good halves, return the bad rows.

    Sub-batch tokens derive from the batch id and row positions, so a
    retry after a crash re-sends the same sub-blocks and is deduplicated.
    """
    lines = batch.block.splitlines(keepends=True)
    rejected: list[tuple[int, ClickHouseError]] = []

    def split(lo: int, hi: int, failure: ClickHouseError) -> None:
        if hi - lo == 1:
            rejected.append((lo, failure))
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                clickhouse.insert_tsv(
                    ch,
                    table=config.CLICKHOUSE_TABLE,
                    block=b"".join(lines[a:b]),
                    token=f"{batch.id}:{a}:{b}",
                )
            except ClickHouseError as sub_error:
                if sub_error.transient:
                    raise
                split(a, b, sub_error)

    split(0, len(lines), error)
    return rejected
