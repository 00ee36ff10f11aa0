"""Fencing: only the current holder of a batch inserts it, finishes it or postpones it."""

from __future__ import annotations

from django.db import connection

from event_log import sql
from event_log.control import CONTROL_ID, RelaysPausedError
from event_log.relay import prepared
from event_log.relay.batch import Batch
from event_log.relay.tracing import step


class LeaseLostError(Exception):
    """Another relay took the batch over: this one must leave it alone."""


def renew_lease(batch: Batch, *, lease: float) -> None:
    """Renew this holder's lease right before an INSERT, or raise :class:`LeaseLostError`.

    A relay paused past its lease (GC, SIGSTOP, a slow disk) finds the batch under
    another attempt number and sends nothing: its first attempt cannot land after
    the batch was delivered and more inserts than the deduplication window followed.
    Raises :class:`RelaysPausedError` (lease renewed, nothing sent) while operators
    pause relays: a relay sends no INSERT after the flag is set, whatever it holds.
    """
    with step("renew lease"), prepared.cursor() as cur:
        cur.execute(
            sql.RENEW_LEASE,
            {
                **batch.holder,
                "lease": lease,
                "own_transaction": not connection.in_atomic_block,
                "control_id": CONTROL_ID,
            },
        )
        renewed = cur.fetchone()
    if renewed is None:
        raise LeaseLostError(f"batch {batch.id} is no longer held by attempt {batch.attempts}")
    if renewed[0]:
        raise RelaysPausedError("relays are paused")
