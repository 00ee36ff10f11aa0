"""What a relay holds while it delivers: a sealed batch, and the report of a run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Batch:
    """A sealed batch: its id is the deduplication token of its INSERT."""

    id: uuid.UUID
    attempts: int
    first_id: int  # the batch's rows lie between these outbox ids
    last_id: int
    block: bytes  # TabSeparated rows, in outbox id order

    @property
    def keys(self) -> dict[str, uuid.UUID | int]:
        """The parameters that select the batch's rows (see event_log.sql)."""
        return {"batch_id": self.id, "first_id": self.first_id, "last_id": self.last_id}

    @property
    def rows(self) -> int:
        return self.block.count(b"\n")


@dataclass(slots=True)
class RelayReport:
    batches: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    drained: bool = False
