"""Step 2, write: the batch's rows into ClickHouse, each row once.

The fast path, a first attempt whose one INSERT ClickHouse acknowledges, costs a
lease renewal and the INSERT. Everything else (a re-sent batch, rows refused,
an INSERT too large) ends by looking up which rows ClickHouse holds, so the
outcome is what ClickHouse has, not what it answered.
"""

from __future__ import annotations

import uuid

import structlog
from clickhouse_connect.driver.client import Client

from event_log.clickhouse import ClickHouseError
from event_log.conf import EventLogSettings
from event_log.relay.batch import Batch, Delivery, event_id
from event_log.relay.claim import context_bytes
from event_log.relay.isolate import InsertBudgetSpentError, Sender
from event_log.relay.verify import stored_event_ids

logger = structlog.get_logger(__name__)

# Token generations tried in one attempt for rows acknowledged but not stored. Each
# attempt starts again from the first, so the bound must exceed the generations that
# crashes could have left in ClickHouse's log without their rows (one per crash).
GENERATIONS = 16


def write(ch: Client, config: EventLogSettings, batch: Batch, *, timeout: float | None) -> Delivery:
    """Insert the batch; returns what ClickHouse holds and refuses.

    Raises ``ClickHouseError`` for a transient failure and
    ``relay.fence.LeaseLostError`` when another relay took the batch over.
    """
    sender = Sender(ch=ch, config=config, batch=batch, timeout=timeout)
    rejected: dict[uuid.UUID, ClickHouseError] = {}
    if (
        batch.rows == 1
        and len(batch.block) > config.BATCH_MAX_BYTES
        and (size := context_bytes(batch)) > config.BATCH_MAX_BYTES
    ):
        # The seal let it travel alone; the same measure decides it is not sent.
        rejected[event_id(batch.block)] = ClickHouseError(
            f"the event's context is {size} bytes, over EVENT_LOG_BATCH_MAX_BYTES "
            f"({config.BATCH_MAX_BYTES}); it was not sent"
        )
        return Delivery(delivered=set(), rejected=rejected)
    refused = None
    if batch.attempts == 1:
        try:
            sender.insert(None)  # the fast path: the block as sealed, under the batch id
        except ClickHouseError as first_error:
            if first_error.transient:
                raise
            refused = first_error
        else:
            return Delivery()
    lines = batch.lines()
    if refused is not None:
        pending = lines
    else:
        stored = stored_event_ids(ch, config, batch)
        pending = [line for line in lines if event_id(line) not in stored]
        if not pending:
            return Delivery(delivered=stored)
    try:
        rejected |= sender.send(pending, refused=refused)
        for generation in range(1, GENERATIONS + 1):
            stored = stored_event_ids(ch, config, batch)
            done = stored | set(rejected)
            missing = [line for line in lines if event_id(line) not in done]
            if not missing:
                return Delivery(delivered=stored, rejected=rejected)
            # Acknowledged yet absent: ClickHouse kept a token without its rows.
            logger.warning(
                "outbox_batch_rows_missing",
                batch_id=str(batch.id),
                missing=len(missing),
                generation=generation,
            )
            sender.generation = generation
            rejected |= sender.send(missing)
        error = ClickHouseError(
            f"ClickHouse acknowledged rows of batch {batch.id} it does not hold, "
            f"{GENERATIONS + 1} times"
        )
    except InsertBudgetSpentError as exc:
        rejected |= sender.rejected
        error = ClickHouseError(f"{exc}: the rest waits for the next attempt")
    stored = stored_event_ids(ch, config, batch)
    done = stored | set(rejected)
    left = sum(1 for line in lines if event_id(line) not in done)
    return Delivery(delivered=stored, rejected=rejected, left=left, error=error)
