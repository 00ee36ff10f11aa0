"""Step 3, finish: delete what ClickHouse holds, dead-letter what it refuses; or give
the batch back for a later attempt. Every statement acts only for the batch's holder.

Both finishes append the batch's entries to the batch chain (event_log.chain) last:
the chain's head stays locked only from there to the commit (the fast path's one
statement moves the head once its rows are deleted, recorded and counted).
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

from event_log import chain, sql
from event_log.relay import prepared
from event_log.relay.batch import Batch, Delivery, event_id
from event_log.relay.fence import LeaseLostError

# FINISH_BATCH's chain parameters when there is no entry to append (with_entry false).
NO_ENTRY: dict[str, Any] = {
    "genesis": chain.GENESIS,
    "entry_digest": b"",
    "kind": chain.DELIVERY,
    "rows": 0,
    "first_event_at": None,
    "last_event_at": None,
    "row_digests": b"",
}


def finish(
    batch: Batch,
    *,
    entry: chain.PendingEntry | None = None,
    appended: list[chain.Entry] | None = None,
) -> int:
    """The fast path: the whole batch was acknowledged; delete it. Returns rows deleted.

    ``entry`` is the batch's chain entry if the caller computed it already (the relay
    does, in its own thread, while its second connection is busy). The chain entry it
    appended is added to ``appended``. Raises :class:`LeaseLostError` (and changes
    nothing) when another relay holds the batch now.
    """
    pending = entry or chain.pending_rows(chain.DELIVERY, batch.id, batch.lines())
    entry_parameters = chain.entry_parameters(pending) if pending is not None else NO_ENTRY
    # One statement, its own transaction (FINISH_BATCH): deletes, records, counts and
    # chains nothing if this relay no longer holds the batch.
    with prepared.cursor() as cur:
        cur.execute(
            sql.FINISH_BATCH,
            {
                **entry_parameters,
                **batch.keys,
                "attempts": batch.attempts,
                "with_entry": pending is not None,
            },
        )
        finished = cur.fetchone()
    if finished is None:
        raise LeaseLostError(f"batch {batch.id} is no longer held by attempt {batch.attempts}")
    deleted, *link = finished
    # Only once committed: an entry rolled back must never reach ClickHouse's copy.
    if pending is not None and appended is not None:
        appended.append(chain.appended_entry(pending, entry_parameters, link))
    return int(deleted)


def finish_checked(
    batch: Batch,
    delivery: Delivery,
    *,
    delay: float,
    appended: list[chain.Entry] | None = None,
) -> tuple[int, int]:
    """The slow path: delete the rows ClickHouse holds, dead-letter those it refuses.

    Rows in neither stay sealed and the batch waits ``delay`` seconds for its next
    attempt; a batch with no row left is deleted. Returns (deleted, dead-lettered);
    the chain entries it appended are added to ``appended``.
    """
    delivered = sorted(delivery.delivered or ())
    rejected = sorted(delivery.rejected.items())
    # The batch's rows are those still in the outbox (the holder copied them at its
    # claim), so rows finished by an earlier attempt are not chained twice.
    lines = batch.lines()
    delivered_set, rejected_set = set(delivered), set(delivery.rejected)
    entries = [
        chain.pending_rows(
            chain.DELIVERY, batch.id, [line for line in lines if event_id(line) in delivered_set]
        ),
        chain.pending_rows(
            chain.DEAD_LETTER,
            batch.id,
            [line for line in lines if event_id(line) in rejected_set],
        ),
    ]
    error = delivery.error.summary[:2000] if delivery.error else ""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql.FINISH_WITHOUT_FSYNC)
        cur.execute(sql.HOLD_BATCH, batch.holder)
        if cur.fetchone() is None:
            raise LeaseLostError(f"batch {batch.id} is no longer held by attempt {batch.attempts}")
        dead_lettered = 0
        if rejected:
            cur.execute(
                sql.DEAD_LETTER_ROWS,
                {
                    **batch.keys,
                    "event_ids": [event_id for event_id, _ in rejected],
                    "errors": [failure.summary[:2000] for _, failure in rejected],
                    "codes": [failure.code for _, failure in rejected],
                    "attempts": batch.attempts,
                },
            )
            dead_lettered = len(cur.fetchall())
        if delivered:
            cur.execute(sql.RECORD_DELIVERY, {**batch.keys, "event_ids": delivered})
        cur.execute(
            sql.FINISH_ROWS,
            {**batch.keys, "event_ids": delivered, "dead_lettered": dead_lettered},
        )
        deleted = int(cur.fetchone()[0])
        cur.execute(sql.CLOSE_BATCH, batch.keys)
        if cur.fetchone() is None:
            cur.execute(sql.POSTPONE_BATCH, {**batch.holder, "delay": delay, "error": error})
        chained = [chain.append(cur, pending) for pending in entries if pending is not None]
    if appended is not None:  # committed
        appended.extend(chained)
    return deleted, dead_lettered


def release(batch: Batch, *, delay: float, error: str) -> None:
    """Let any relay take the batch again after ``delay`` seconds (same rows, same tokens).

    Only the holder's release counts; a failure here is harmless (the lease then
    expires by itself), so the caller's error handling decides what to do with it.
    """
    with connection.cursor() as cur:
        cur.execute(
            sql.POSTPONE_BATCH,
            {**batch.holder, "delay": delay, "error": error[:2000]},
        )
