"""What a relay holds while it delivers: a sealed batch, its outcome, and a run's report."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from event_log import chain, sql
from event_log.clickhouse import ClickHouseError

_REQUEST_ID_FIELD = sql.CLICKHOUSE_COLUMNS.index("request_id")


@dataclass(frozen=True, slots=True)
class Batch:
    """A sealed batch, as one relay holds it.

    ``attempts`` is the holder's fencing number: a take-over after the lease adds
    one, and every later step of this holder checks it is still the batch's.
    """

    id: uuid.UUID
    attempts: int
    first_id: int  # the batch's rows lie between these outbox ids
    last_id: int
    block: bytes  # TabSeparated rows, in outbox id order
    # Counted once: the loop, the log and the span read it several times a batch, and
    # counting the lines of a 5,000-row block costs about 0.7 ms.
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", self.block.count(b"\n"))

    @property
    def keys(self) -> dict[str, uuid.UUID | int]:
        """The parameters that select the batch's rows (see event_log.sql)."""
        return {"batch_id": self.id, "first_id": self.first_id, "last_id": self.last_id}

    @property
    def holder(self) -> dict[str, uuid.UUID | int]:
        """The parameters that name this holder of the batch (see sql.RENEW_LEASE)."""
        return {"batch_id": self.id, "attempts": self.attempts}

    @property
    def first_request_id(self) -> str:
        """The request id of the batch's first event ("" if it has none): read from the
        first line only, so it costs nothing however big the batch."""
        fields = self.block[: self.block.find(b"\n")].split(b"\t")
        if len(fields) <= _REQUEST_ID_FIELD:
            return ""
        return fields[_REQUEST_ID_FIELD].decode(errors="replace")

    def lines(self) -> list[bytes]:
        """The rows, one TabSeparated line each (a row never spans lines)."""
        return self.block.splitlines(keepends=True)


def event_id(line: bytes) -> uuid.UUID:
    """The event id of one TabSeparated row: its first field."""
    return uuid.UUID(line[:36].decode())


@dataclass(slots=True)
class Delivery:
    """What one attempt achieved.

    ``delivered`` is None when the whole batch went in one acknowledged INSERT (the
    fast path); otherwise the event ids ClickHouse was seen to hold. ``rejected``
    are the rows ClickHouse refuses, with why; rows in neither stay in the batch.
    """

    delivered: set[uuid.UUID] | None = None
    rejected: dict[uuid.UUID, ClickHouseError] = field(default_factory=dict)
    left: int = 0
    error: ClickHouseError | None = None  # why rows are left, when they are


@dataclass(frozen=True, slots=True)
class Inserted:
    """A batch ClickHouse took (as ``delivery`` says), not yet finished in PostgreSQL."""

    batch: Batch
    delivery: Delivery
    delay: float  # before its next attempt, for rows it left
    started: float  # perf_counter() when its insert began
    log: Any  # its bound logger
    entry: chain.PendingEntry | None = None  # its chain entry, on the fast path


@dataclass(frozen=True, slots=True)
class Finishing:
    """A batch being finished on the relay's second connection (relay.overlap)."""

    inserted: Inserted
    outcome: Future[Finished | Exception]


@dataclass(frozen=True, slots=True)
class Finished:
    """What finishing a batch did: rows deleted, rows dead-lettered, chain entries appended."""

    deleted: int
    dead_lettered: int
    entries: list[chain.Entry]


@dataclass(slots=True)
class RelayReport:
    batches: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    failures: int = 0
    leases_lost: int = 0
    errors: list[str] = field(default_factory=list)
    drained: bool = False
