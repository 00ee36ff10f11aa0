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

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, timedelta
from typing import Any

import sentry_sdk
import structlog
from clickhouse_connect.driver.client import Client
from django.db import DatabaseError, InterfaceError, connection, transaction
from psycopg import sql as pgsql

from event_log import clickhouse, sql
from event_log.clickhouse import ClickHouseError
from event_log.conf import EventLogSettings, event_log_settings
from event_log.metrics import BATCH_DURATION, BATCH_FAILURES

logger = structlog.get_logger(__name__)

Checkpoint = Callable[[str, "Batch"], None]

# Embedded engine: return the allocator's freed memory at most this often while
# draining, and at the end of every run (event_log.clickhouse.release_engine_memory).
ENGINE_MEMORY_RELEASE_INTERVAL = 1.0


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


def backoff_delay(attempt: int, *, initial: float, cap: float) -> float:
    """Exponential back-off with full jitter in [50 %, 100 %] of the step, capped."""
    step = min(cap, initial * 2 ** max(0, attempt - 1))
    return step * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


def _no_checkpoint(step: str, batch: Batch) -> None:
    return None


class Relay:
    """One relay. Safe to run any number of them at once, in any processes."""

    def __init__(
        self,
        *,
        config: EventLogSettings | None = None,
        clickhouse_url: str | None = None,
        checkpoint: Checkpoint = _no_checkpoint,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or event_log_settings()
        self.clickhouse_url = clickhouse_url
        self.checkpoint = checkpoint
        self.sleep = sleep
        self._client: Client | None = None
        # When the last batch was partial: batching by time as well as by size.
        self._partial_sent_at: float | None = None
        self._engine_memory_released_at = time.monotonic()
        self._embedded_engine = (
            clickhouse.embedded_path(self.clickhouse_url or clickhouse.clickhouse_url()) is not None
        )

    # -- the three steps -------------------------------------------------------

    def claim(self) -> Batch | None:
        """Take an expired batch or seal a new one; None when the outbox is empty."""
        lease = self.config.LEASE_SECONDS
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(sql.TAKE_EXPIRED_BATCH, {"lease": lease})
            taken = cur.fetchone()
            if taken is not None:
                batch_id, attempts, first_id, last_id = taken
            else:
                batch_id, attempts = uuid.uuid4(), 1
                cur.execute(
                    sql.SEAL_BATCH,
                    {"batch_id": batch_id, "limit": self.config.BATCH_SIZE, "lease": lease},
                )
                sealed = cur.fetchone()
                if sealed is None:
                    return None
                first_id, last_id = sealed
            batch = Batch(
                id=batch_id, attempts=attempts, first_id=first_id, last_id=last_id, block=b""
            )
            return replace(batch, block=_copy_rows(cur, batch))

    def write(self, batch: Batch) -> list[tuple[int, ClickHouseError]]:
        """Insert the batch; returns the positions of rows rejected for their data.

        Raises :class:`ClickHouseError` when the failure is transient.
        """
        if not batch.block:
            return []
        ch = self.connect_clickhouse()
        if batch.attempts > 1:
            stored, expected = self._stored_rows(ch, batch)
            if stored == expected:
                return []  # the earlier attempt's INSERT landed
            if stored:
                try:
                    self._send_missing(ch, batch, expected - stored)
                except ClickHouseError as error:
                    if error.transient:
                        raise
                    # Poison among the missing rows: bisect the whole batch, as the
                    # first attempt did (its sub-batch tokens deduplicate what landed).
                else:
                    return []
        try:
            clickhouse.insert_tsv(
                ch, table=self.config.CLICKHOUSE_TABLE, block=batch.block, token=str(batch.id)
            )
        except ClickHouseError as error:
            if error.transient:
                raise
            return self._isolate(ch, batch, error)
        if batch.attempts > 1:
            stored, expected = self._stored_rows(ch, batch)
            if stored != expected:
                self._send_missing(ch, batch, expected - stored)
        return []

    def _stored_rows(self, ch: Client, batch: Batch) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """For a re-sent batch: which of its event ids ClickHouse holds, and all of them.

        The token alone cannot answer this. A ClickHouse process that died in the
        middle of an INSERT (the embedded engine dies with its relay) can come back
        remembering the token without the rows, which a plain re-send would then
        lose; or holding the rows without the token, which a plain re-send would
        then duplicate. Looking the ids up (through the table's sorting key) settles
        both; first attempts, the common case, skip it.
        """
        with connection.cursor() as cur:
            cur.execute(sql.BATCH_EVENT_RANGE, batch.keys)
            event_types, first_at, last_at = cur.fetchone()
            cur.execute(sql.BATCH_EVENT_IDS, batch.keys)
            expected = {row[0] for row in cur.fetchall()}
        if not expected:
            return set(), expected
        # Naive UTC, widened: the bounds only narrow the scan to the sorting key.
        margin = timedelta(minutes=1)
        result = ch.query(
            sql.STORED_EVENT_IDS.format(table=self.config.CLICKHOUSE_TABLE),
            parameters={
                "types": tuple(event_types),
                "first_at": first_at.astimezone(UTC).replace(tzinfo=None) - margin,
                "last_at": last_at.astimezone(UTC).replace(tzinfo=None) + margin,
                "ids": tuple(expected),
            },
        )
        return {row[0] for row in result.result_rows} & expected, expected

    def _send_missing(self, ch: Client, batch: Batch, missing: set[uuid.UUID]) -> None:
        """Send rows verifiably absent from ClickHouse, under a token of this attempt."""
        logger.warning("outbox_batch_rows_missing", batch_id=str(batch.id), missing=len(missing))
        with connection.cursor() as cur:
            block = _copy_rows(cur, batch, only=missing)
        clickhouse.insert_tsv(
            ch,
            table=self.config.CLICKHOUSE_TABLE,
            block=block,
            token=f"{batch.id}:attempt-{batch.attempts}",
        )

    def finish(self, batch: Batch, rejected: list[tuple[int, ClickHouseError]]) -> None:
        """Delete the delivered batch; rejected rows go to the dead-letter table."""
        with transaction.atomic(), connection.cursor() as cur:
            # No need to wait for the disk: if PostgreSQL loses this commit in a crash,
            # the batch comes back sealed and is re-sent under the same token, which
            # ClickHouse drops. (The seal, by contrast, is a normal durable commit.)
            cur.execute(sql.FINISH_WITHOUT_FSYNC)
            if rejected:
                cur.execute(sql.BATCH_ROW_IDS, batch.keys)
                ids = [row[0] for row in cur.fetchall()]
                for position, error in rejected:
                    cur.execute(
                        sql.DEAD_LETTER_ROWS,
                        {
                            "ids": [ids[position]],
                            "error": str(error),
                            "error_code": error.code,
                            "attempts": batch.attempts,
                            "batch_id": batch.id,
                        },
                    )
            cur.execute(sql.FINISH_BATCH, {**batch.keys, "dead_lettered": len(rejected)})

    # -- the loop --------------------------------------------------------------

    def run(
        self, *, time_budget: float | None = None, max_batches: int | None = None
    ) -> RelayReport:
        """Deliver batches until the outbox is empty, the budget is spent or ``max_batches``."""
        with _trace("event_log.relay", "relay run") as span:
            try:
                report = self._run(time_budget=time_budget, max_batches=max_batches)
            finally:
                self._release_engine_memory(force=True)
            span.set_data("batches", report.batches)
            span.set_data("events_delivered", report.delivered)
            span.set_data("failures", report.failures)
        return report

    def _run(self, *, time_budget: float | None, max_batches: int | None) -> RelayReport:
        budget = self.config.TIME_BUDGET if time_budget is None else time_budget
        deadline = time.monotonic() + budget
        report = RelayReport()
        db_failures = 0
        while time.monotonic() < deadline and (max_batches is None or report.batches < max_batches):
            self._gather(deadline)
            try:
                with sentry_sdk.start_span(op="db", name="event_log seal batch"):
                    batch = self.claim()
            except (DatabaseError, InterfaceError) as exc:
                db_failures += 1
                if not self._wait_after_database_error(exc, db_failures, deadline, report):
                    break
                continue
            db_failures = 0
            if batch is None:
                report.drained = True
                break
            with sentry_sdk.start_span(
                op="event_log.batch", name="event_log deliver batch"
            ) as span:
                span.set_data("batch_id", str(batch.id))
                span.set_data("rows", batch.rows)
                span.set_data("attempt", batch.attempts)
                if not self._deliver(batch, deadline, report):
                    break
            self._release_engine_memory()
        return report

    def _release_engine_memory(self, *, force: bool = False) -> None:
        """Embedded engine: release the memory it freed, at most once per interval."""
        if not self._embedded_engine or self._client is None:
            return
        now = time.monotonic()
        if not force and now - self._engine_memory_released_at < ENGINE_MEMORY_RELEASE_INTERVAL:
            return
        self._engine_memory_released_at = now
        try:
            clickhouse.release_engine_memory(self._client)
        except ClickHouseError as exc:
            # Refused (say, by an engine built without jemalloc): this relay stops asking.
            self._embedded_engine = False
            logger.info("clickhouse_engine_memory_release_unavailable", error=str(exc))

    def _deliver(self, batch: Batch, deadline: float, report: RelayReport) -> bool:
        log = logger.bind(batch_id=str(batch.id), rows=batch.rows, attempt=batch.attempts)
        started = time.perf_counter()
        self.checkpoint("sealed", batch)
        try:
            with sentry_sdk.start_span(op="db.clickhouse", name="event_log insert batch"):
                rejected = self.write(batch)
        except ClickHouseError as error:
            return self._postpone(batch, error, deadline, report, log)
        self.checkpoint("inserted", batch)
        try:
            with sentry_sdk.start_span(op="db", name="event_log delete batch"):
                self.finish(batch, rejected)
        except (DatabaseError, InterfaceError) as exc:
            # The insert is done but the rows are still here: the batch stays sealed
            # and is re-sent under the same token, which ClickHouse deduplicates.
            report.failures += 1
            report.errors.append(str(exc))
            log.warning("outbox_batch_finish_failed", error=str(exc))
            connection.close()
            self._release(batch, delay=0.0, error=str(exc))
            return True
        self.checkpoint("finished", batch)
        partial = batch.rows < self.config.BATCH_SIZE
        self._partial_sent_at = time.monotonic() if partial else None
        duration = time.perf_counter() - started
        BATCH_DURATION.observe(duration)
        report.batches += 1
        report.delivered += batch.rows - len(rejected)
        report.dead_lettered += len(rejected)
        if rejected:
            first_error = rejected[0][1]
            log.error(
                "outbox_events_dead_lettered",
                dead_lettered=len(rejected),
                error=str(first_error),
                error_code=first_error.code,
            )
            _capture(first_error, batch, dead_lettered=len(rejected))
        log.info(
            "outbox_batch_delivered",
            delivered=batch.rows - len(rejected),
            duration_ms=round(duration * 1000, 3),
        )
        return True

    def _postpone(
        self,
        batch: Batch,
        error: ClickHouseError,
        deadline: float,
        report: RelayReport,
        log: structlog.stdlib.BoundLogger,
    ) -> bool:
        delay = backoff_delay(
            batch.attempts, initial=self.config.BACKOFF_INITIAL, cap=self.config.BACKOFF_MAX
        )
        report.failures += 1
        report.errors.append(str(error))
        BATCH_FAILURES.inc()
        _capture(error, batch, retry_in_s=round(delay, 3))
        log.warning(
            "outbox_batch_failed",
            error=str(error),
            error_code=error.code,
            retry_in_s=round(delay, 3),
        )
        self._drop_client()
        self._release(batch, delay=delay, error=str(error))
        if time.monotonic() + delay >= deadline:
            return False
        self.sleep(delay)
        return True

    def _wait_after_database_error(
        self, exc: Exception, failures: int, deadline: float, report: RelayReport
    ) -> bool:
        connection.close()
        delay = backoff_delay(
            failures, initial=self.config.BACKOFF_INITIAL, cap=self.config.BACKOFF_MAX
        )
        report.failures += 1
        report.errors.append(str(exc))
        logger.warning("outbox_database_failed", error=str(exc), retry_in_s=round(delay, 3))
        if time.monotonic() + delay >= deadline:
            return False
        self.sleep(delay)
        return True

    # -- helpers ---------------------------------------------------------------

    def _gather(self, deadline: float) -> None:
        """After a partial batch, let events gather for MIN_INSERT_INTERVAL.

        Under load every batch is full and nothing waits; on a trickle this caps a
        relay at one INSERT per interval instead of one per handful of events.
        """
        if self._partial_sent_at is None:
            return
        wait = self._partial_sent_at + self.config.MIN_INSERT_INTERVAL - time.monotonic()
        if wait > 0:
            self.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    def _release(self, batch: Batch, *, delay: float, error: str) -> None:
        """Let any relay take the batch again after ``delay`` seconds (same rows, same token)."""
        try:
            with connection.cursor() as cur:
                cur.execute(
                    sql.POSTPONE_BATCH,
                    {"batch_id": batch.id, "delay": delay, "error": error[:2000]},
                )
        except (DatabaseError, InterfaceError):
            connection.close()  # the lease then expires by itself; nothing is lost

    def _isolate(
        self, ch: Client, batch: Batch, error: ClickHouseError
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
                        table=self.config.CLICKHOUSE_TABLE,
                        block=b"".join(lines[a:b]),
                        token=f"{batch.id}:{a}:{b}",
                    )
                except ClickHouseError as sub_error:
                    if sub_error.transient:
                        raise
                    split(a, b, sub_error)

        split(0, len(lines), error)
        return rejected

    def connect_clickhouse(self) -> Client:
        """The relay's ClickHouse client, opened on first use and kept until close()."""
        if self._client is None:
            self._client = clickhouse.connect(
                self.clickhouse_url, timeout=self.config.INSERT_TIMEOUT
            )
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        """Close the ClickHouse client (the embedded engine can then be opened elsewhere)."""
        self._drop_client()


def _copy_rows(cur: Any, batch: Batch, *, only: set[uuid.UUID] | None = None) -> bytes:
    """The batch's rows (or those of ``only``) as TabSeparated text, in id order."""
    statement = pgsql.SQL(sql.COPY_BATCH).format(
        batch_id=pgsql.Literal(batch.id),
        first_id=pgsql.Literal(batch.first_id),
        last_id=pgsql.Literal(batch.last_id),
        only=pgsql.SQL(sql.ONLY_EVENTS).format(event_ids=pgsql.Literal(list(only)))
        if only
        else pgsql.SQL(""),
    )
    with cur.copy(statement) as copy:
        return b"".join(copy)  # one chunk per row, joined once


def _trace(op: str, name: str) -> Any:
    """A span under the current transaction (a Celery task's), or a transaction of its own."""
    if sentry_sdk.get_current_span() is not None:
        return sentry_sdk.start_span(op=op, name=name)
    return sentry_sdk.start_transaction(op=op, name=name)


def _capture(error: ClickHouseError, batch: Batch, **extra: Any) -> None:
    """Report a batch failure to Sentry with what an operator needs (no-op without a DSN)."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("event_log.batch_id", str(batch.id))
        scope.set_tag("clickhouse.error_code", str(error.code))
        scope.set_context(
            "event_log_batch",
            {
                "batch_id": str(batch.id),
                "rows": batch.rows,
                "attempt": batch.attempts,
                "clickhouse_error": str(error),
                "clickhouse_error_code": error.code,
                "transient": error.transient,
                **extra,
            },
        )
        sentry_sdk.capture_exception(error)


def run_relay(
    *,
    time_budget: float | None = None,
    max_batches: int | None = None,
    relay: Relay | None = None,
) -> RelayReport:
    """Drain the outbox once with a fresh or given relay."""
    own = relay is None
    relay = relay or Relay()
    try:
        return relay.run(time_budget=time_budget, max_batches=max_batches)
    finally:
        if own:
            relay.close()
