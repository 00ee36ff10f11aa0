"""The relay: moves committed events from the PostgreSQL outbox to ClickHouse, exactly once.

Plain Python, no Celery: a Celery task, ``manage.py relay_events`` and tests all
call :func:`run_relay`. One batch goes through three named steps:

1. **claim** — take over a sealed batch whose lease expired, or seal up to
   ``BATCH_SIZE`` new rows under a new batch id with a lease (one short
   PostgreSQL transaction, ``FOR UPDATE SKIP LOCKED``);
2. **write** — one ClickHouse INSERT of the batch's rows, in id order, with
   ``insert_deduplication_token = batch id``;
3. **finish** — delete the batch's rows (one transaction).

A relay that dies between steps leaves a sealed batch; after its lease another
relay sends *the same rows under the same token* and ClickHouse drops the
duplicate block. Transient ClickHouse errors postpone the batch with an
exponential, jittered back-off; rows ClickHouse rejects for their data are
isolated by bisection and moved to the dead-letter table.
"""

from event_log.relay.backoff import backoff_delay
from event_log.relay.batch import Batch, RelayReport
from event_log.relay.loop import Relay, run_relay

__all__ = ["Batch", "Relay", "RelayReport", "backoff_delay", "run_relay"]
