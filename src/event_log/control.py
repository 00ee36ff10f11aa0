"""Pausing and resuming every relay at once: a flag in PostgreSQL that each relay obeys.

The flag is the single row of ``event_log_relay_control`` (:class:`RelayControl`). A
relay reads it as each claim starts (in the claim's first statement,
``sql.TAKE_EXPIRED_BATCH``; :func:`relays_paused` for everyone else) and,
while it is set, returns without claiming: events wait in the outbox, sealed batches
keep their leases and are taken again after ``resume``. A missing row means running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from django.db import connection, transaction
from django.utils import timezone

logger = structlog.get_logger(__name__)

CONTROL_ID = 1
PAUSED = "SELECT paused FROM event_log_relay_control WHERE id = %s"


class RelaysPausedError(Exception):
    """Operators paused the relays: a claim found the flag set and claimed nothing."""


@dataclass(frozen=True, slots=True)
class RelayControlState:
    paused: bool
    paused_by: str = ""
    paused_at: datetime | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "paused_by": self.paused_by,
            "paused_at": self.paused_at.isoformat() if self.paused_at else None,
            "reason": self.reason,
        }


def relays_paused() -> bool:
    """Whether relays must not claim now (one primary-key read; raises database errors)."""
    with connection.cursor() as cur:
        cur.execute(PAUSED, [CONTROL_ID])
        row = cur.fetchone()
    return bool(row and row[0])


def relay_control() -> RelayControlState:
    """The flag with who set it, when and why."""
    from event_log.models import RelayControl  # noqa: PLC0415 (the relay imports this module before apps load)

    row = RelayControl.objects.filter(id=CONTROL_ID).first()
    if row is None:
        return RelayControlState(paused=False)
    return RelayControlState(row.paused, row.paused_by, row.paused_at, row.reason)


def relays_pause(*, by: str, reason: str = "") -> RelayControlState:
    """Pause every relay from its next claim on. Pausing again keeps the first time."""
    from event_log.models import RelayControl  # noqa: PLC0415 (see relay_control)

    with transaction.atomic():
        row, _ = RelayControl.objects.select_for_update().get_or_create(id=CONTROL_ID)
        if not row.paused:
            row.paused_at = timezone.now()
        row.paused = True
        row.paused_by = by[:150]
        row.reason = reason
        row.save()
    logger.warning("relays_paused", paused_by=row.paused_by, reason=reason)
    return relay_control()


def relays_resume(*, by: str) -> RelayControlState:
    """Let every relay claim again (from its next run: Beat's next tick at the latest)."""
    from event_log.models import RelayControl  # noqa: PLC0415 (see relay_control)

    with transaction.atomic():
        row, _ = RelayControl.objects.select_for_update().get_or_create(id=CONTROL_ID)
        was_paused = row.paused
        row.paused = False
        row.paused_at = None
        row.reason = ""
        row.paused_by = ""
        row.save()
    logger.warning("relays_resumed", resumed_by=by, was_paused=was_paused)
    return relay_control()


def batches_retry_now(*, ids: list[Any]) -> int:
    """Make the given sealed batches takeable by the next relay run: ``lease_until = now()``.

    For a batch waiting out a back-off, or left by a relay that died. A relay still
    working on one loses it safely: the next attempt fences it off (docs/architecture.md,
    "fenced attempts"). Returns how many batches were made due.
    """
    from event_log.models import OutboxBatch  # noqa: PLC0415 (see relay_control)

    return OutboxBatch.objects.filter(id__in=ids).update(lease_until=timezone.now())
