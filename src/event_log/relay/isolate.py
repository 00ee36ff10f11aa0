"""Sending rows, and isolating the ones ClickHouse refuses.

An INSERT ClickHouse refuses writes nothing, so a refused INSERT is a cheap probe.
When ClickHouse names the bad row (``at row N``), that row is sent alone, then the
rest again as one INSERT: a batch with k bad rows takes about 2k + 1 inserts and
leaves one part, not one part per good stretch. Without a row number the rows are
bisected down to single rows. A row sent alone and refused is rejected with
ClickHouse's error; accepted, it was never bad. An INSERT too large for a proxy or
for the server's memory is halved; one spanning more months than ClickHouse takes
at once is split by month. A budget bounds the inserts of one attempt; the rows it
confirmed as refused are kept, what it leaves stays in the batch for the next
attempt.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError, Failure
from event_log.conf import EventLogSettings
from event_log.relay.batch import Batch, event_id
from event_log.relay.fence import renew_lease
from event_log.relay.tokens import token_for, whole_batch_token

# ClickHouse's default max_partitions_per_insert_block is 100.
MONTHS_PER_INSERT = 50


class InsertBudgetSpentError(Exception):
    """This attempt sent as many INSERTs as EVENT_LOG_ISOLATION_MAX_INSERTS allows."""


@dataclass(slots=True)
class Sender:
    """Sends rows of one batch as its holder, each INSERT under the token of its rows."""

    ch: Client
    config: EventLogSettings
    batch: Batch
    timeout: float | None
    generation: int = 0
    inserts: int = 0
    # Rows refused so far in this attempt: kept when the budget runs out mid-send, so
    # the next attempt starts past them instead of finding them all over again.
    rejected: dict[uuid.UUID, ClickHouseError] = field(default_factory=dict)

    def insert(self, lines: list[bytes] | None) -> None:
        """One INSERT of ``lines`` (None: the whole batch, as sealed), after renewing
        the lease (raises ``ClickHouseError``)."""
        if self.inserts >= self.config.ISOLATION_MAX_INSERTS:
            raise InsertBudgetSpentError(
                f"batch {self.batch.id}: {self.inserts} inserts in this attempt"
            )
        self.inserts += 1
        renew_lease(self.batch, lease=self.config.LEASE_SECONDS)
        if lines is None:
            block, token = self.batch.block, whole_batch_token(self.batch, self.generation)
        else:
            ids = [event_id(line) for line in lines]
            block = b"".join(lines)
            token = token_for(self.batch, ids, generation=self.generation)
        clickhouse.insert_tsv(
            self.ch,
            table=self.config.CLICKHOUSE_TABLE,
            block=block,
            token=token,
            timeout=self.timeout,
        )

    def send(
        self, lines: list[bytes], *, refused: ClickHouseError | None = None
    ) -> dict[uuid.UUID, ClickHouseError]:
        """Send ``lines``; returns the rows ClickHouse refuses, with its error for each.

        ``refused`` is the error of an INSERT of exactly ``lines`` that was already
        tried. Raises ``ClickHouseError`` for a transient failure and
        :class:`InsertBudgetSpentError` when the budget is spent.
        """
        rejected = self.rejected
        todo: list[tuple[list[bytes], ClickHouseError | None]] = [(lines, refused)]
        while todo:
            block, error = todo.pop()
            if not block:
                continue
            if error is None:
                try:
                    self.insert(block)
                    continue
                except ClickHouseError as exc:
                    error = exc
            todo += _split(block, error, rejected)
        return rejected


def _split(
    block: list[bytes], error: ClickHouseError, rejected: dict[uuid.UUID, ClickHouseError]
) -> list[tuple[list[bytes], ClickHouseError | None]]:
    """What to try next after ``block`` failed with ``error`` (last in, tried first)."""
    failure = error.failure
    if failure is Failure.TRANSIENT:
        raise error
    if len(block) == 1:
        if failure is Failure.DATA or error.http_status == 413:
            rejected[event_id(block[0])] = error
            return []
        raise error  # one row and still too much memory: a transient condition
    if failure is Failure.DATA and error.row is not None and 1 <= error.row <= len(block):
        suspect = error.row - 1
        rest = block[:suspect] + block[suspect + 1 :]
        # The suspect goes first: confirmed, it is kept even if the budget then runs out.
        return [(rest, None), ([block[suspect]], None)]
    if failure is Failure.TOO_MANY_PARTITIONS:
        groups = _by_month(block)
        if len(groups) > 1:
            return [(group, None) for group in reversed(groups)]
    middle = len(block) // 2
    return [(block[middle:], None), (block[:middle], None)]


def _by_month(block: list[bytes]) -> list[list[bytes]]:
    """The rows in groups of at most MONTHS_PER_INSERT months, each in id order."""
    months: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
    for position, line in enumerate(block):
        months[line.split(b"\t", 3)[2][:7]].append((position, line))
    ordered = [months[key] for key in sorted(months)]
    groups = []
    for start in range(0, len(ordered), MONTHS_PER_INSERT):
        rows = sorted(row for month in ordered[start : start + MONTHS_PER_INSERT] for row in month)
        groups.append([line for _, line in rows])
    return groups
