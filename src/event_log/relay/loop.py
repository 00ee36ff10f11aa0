"""The relay loop: claim, write, finish, again, until the outbox is empty or time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import psycopg
import structlog
from clickhouse_connect.driver.client import Client
from django.db import Error as DjangoDatabaseError
from django.db import connection

from event_log import chain, clickhouse, schema
from event_log.clickhouse import ClickHouseError
from event_log.conf import EventLogSettings, event_log_settings
from event_log.control import RelaysPausedError
from event_log.metrics import BATCH_DURATION, BATCH_FAILURES, BATCHES_STUCK
from event_log.relay.backoff import backoff_delay
from event_log.relay.batch import Batch, Delivery, Finished, Finishing, Inserted, RelayReport
from event_log.relay.claim import claim
from event_log.relay.fence import LeaseLostError
from event_log.relay.finish import finish, finish_checked, release
from event_log.relay.overlap import SecondConnection
from event_log.relay.tracing import capture, step, trace
from event_log.relay.write import write

logger = structlog.get_logger(__name__)

# PostgreSQL failures as Django raises them, and as psycopg raises them where Django
# does not wrap (a connection terminated during COPY raises psycopg's AdminShutdown).
DATABASE_ERRORS = (DjangoDatabaseError, psycopg.Error)

Checkpoint = Callable[[str, "Batch"], None]

# The ClickHouse copy of the batch chain gets one INSERT per this many entries and one at
# the end of each run, rather than one more INSERT per batch.
CHAIN_COPY_ENTRIES = 20

# Embedded engine: return the allocator's freed memory at most this often while
# draining, and at the end of every run (event_log.clickhouse.release_engine_memory).
ENGINE_MEMORY_RELEASE_INTERVAL = 1.0


def describe(error: BaseException | None) -> str:
    """What logs, Sentry and the batch's ``last_error`` say of a failure: never the
    rows ClickHouse quotes in its messages (``ClickHouseError.summary``)."""
    if error is None:
        return ""
    if isinstance(error, ClickHouseError):
        return error.summary[:2000]
    return str(error)[:2000]


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
        self._embedded_engine_url = (
            clickhouse.embedded_path(self.clickhouse_url or clickhouse.clickhouse_url()) is not None
        )
        # Whether to ask the engine to release memory (stops when it refuses).
        self._embedded_engine = self._embedded_engine_url
        # Chain entries appended and not yet copied to ClickHouse (event_log.chain).
        self._uncopied: list[chain.Entry] = []
        self._db_failures = 0  # claims failed in a row (back-off)

    # -- the three steps -------------------------------------------------------

    def claim(self) -> Batch | None:
        """Take an expired batch or seal a new one; None when the outbox is empty.

        Raises ``RelaysPausedError`` while operators pause relays (event_log.control).
        """
        return claim(self.config)

    def write(self, batch: Batch) -> Delivery:
        """Insert the batch as its holder; returns what ClickHouse holds and refuses."""
        if not batch.block:
            return Delivery(delivered=set())
        timeout = None if self._embedded_engine_url else self.config.INSERT_TIMEOUT
        ch = self.connect_clickhouse()
        # Once per client: a table that cannot keep exactly-once gets nothing.
        schema.ensure_table_ready(ch, table=self.config.CLICKHOUSE_TABLE)
        return write(ch, self.config, batch, timeout=timeout)

    def finish(
        self,
        batch: Batch,
        delivery: Delivery,
        *,
        delay: float = 0.0,
        entry: chain.PendingEntry | None = None,
    ) -> Finished:
        """Delete what was delivered, dead-letter what was refused (PostgreSQL only).

        The chain entries it appended come back with the counts: the loop copies them
        to ClickHouse every CHAIN_COPY_ENTRIES entries and at the end of each run, in
        one INSERT (a copy that fails, or a relay that dies first, is made good by the
        next verification, which writes what the copy lacks). ``entry`` is the fast
        path's chain entry, when computed already.
        """
        entries: list[chain.Entry] = []
        if delivery.delivered is None:
            deleted, dead_lettered = finish(batch, entry=entry, appended=entries), 0
        else:
            deleted, dead_lettered = finish_checked(batch, delivery, delay=delay, appended=entries)
        return Finished(deleted=deleted, dead_lettered=dead_lettered, entries=entries)

    def _copy_chain_entries(self) -> None:
        """Copy the chain entries this relay appended to ClickHouse, in one INSERT."""
        entries, self._uncopied = self._uncopied, []
        chain.copy_after_finish(
            self.connect_clickhouse, entries, table=self.config.CLICKHOUSE_TABLE
        )

    # -- the loop --------------------------------------------------------------

    def run(
        self, *, time_budget: float | None = None, max_batches: int | None = None
    ) -> RelayReport:
        """Deliver batches until the outbox is empty, the budget is spent or ``max_batches``.

        Failures of a batch never escape (see ``_deliver``); anything that does (a
        checkpoint's own exception, an interrupt) closes the ClickHouse client first,
        so the embedded engine is not held by a relay nobody runs any more.
        """
        with trace("event_log.relay", "relay run") as span:
            try:
                report = self._run(time_budget=time_budget, max_batches=max_batches)
                self._copy_chain_entries()
            except BaseException:
                self._uncopied = []  # the next verification copies them
                self._drop_client()
                raise
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
        self._db_failures = 0
        second = SecondConnection()  # relay.overlap: used only while batches are full
        batch: Batch | None = None  # claimed, to be inserted next
        inserted: Inserted | None = None  # inserted, to be finished
        finishing: Finishing | None = None  # being finished on the second connection
        going_in = False  # whether this run's last insert took the whole batch
        try:
            while True:
                if batch is None:
                    # One step at a time: what is being finished, then what was inserted.
                    go_on = self._account(finishing, deadline, report)
                    finishing = None
                    if not go_on:
                        break
                    previous, inserted = inserted, None
                    batch, go_on = self._finish_then_claim(previous, deadline, max_batches, report)
                    if batch is None:
                        if go_on:
                            continue
                        break
                # Overlap (relay.overlap): while this batch is inserted, the second
                # connection seals the next (the backlog going on) and then finishes the
                # one before. Only behind an insert that went in: with ClickHouse
                # failing, a relay seals no batch beyond the one it retries.
                in_flight = 1 + (inserted is not None) + (finishing is not None)
                ahead = (
                    going_in
                    and self._is_full(batch)
                    and self._may_claim(deadline, max_batches, report, in_flight=in_flight)
                )
                claimed = second.submit(self._claim_ahead) if ahead else None
                submitted = (
                    Finishing(inserted, second.submit(partial(self._finish, inserted)))
                    if inserted is not None
                    else None
                )
                inserted, go_on = self._insert(batch, deadline, report)
                going_in = inserted is not None and not inserted.delivery.left
                if go_on and inserted is not None and claimed is not None and not claimed.done():
                    # The next batch is still being sealed: rather than wait for it, this
                    # thread finishes the batch it inserted (on its own connection), and
                    # the second connection is left the seal. Whichever of the two is
                    # busier, the finish goes to the other.
                    go_on = self._finished(inserted, self._finish(inserted), deadline, report)
                    inserted = None
                # The next batch as soon as it is sealed: the finish queued behind it
                # goes on during the next insert. The one before, queued before the
                # seal, is done by then.
                batch = claimed.result() if claimed is not None else None
                go_on = self._account(finishing, deadline, report) and go_on
                finishing = submitted
                if not go_on:
                    break
                self._release_engine_memory()
        except BaseException:
            second.close()  # waits for its work in hand; a batch it sealed keeps its lease
            raise
        # A run that stops early (its budget spent in a back-off) still finishes what
        # ClickHouse has, and gives back at once a batch it sealed ahead.
        try:
            self._account(finishing, deadline, report)
            if inserted is not None:
                self._finished(inserted, self._finish(inserted), deadline, report)
            if batch is not None:
                self._give_back(batch)
        finally:
            second.close()
        return report

    def _finish_then_claim(
        self,
        previous: Inserted | None,
        deadline: float,
        max_batches: int | None,
        report: RelayReport,
    ) -> tuple[Batch | None, bool]:
        """One step at a time: finish ``previous``, then claim as ``_claim_now`` does."""
        if previous is not None and not self._finished(
            previous, self._finish(previous), deadline, report
        ):
            return None, False
        if not self._may_claim(deadline, max_batches, report, in_flight=0):
            return None, False
        return self._claim_now(deadline, report)

    def _claim_now(self, deadline: float, report: RelayReport) -> tuple[Batch | None, bool]:
        """Step 1 in the relay's own thread: (the batch or None, whether to go on).

        None and go on: the database failed and the back-off was waited out. None and
        stop: the outbox is empty (the report says drained), relays are paused, or the
        budget is spent.
        """
        self._gather(deadline)
        try:
            with step("seal batch"):
                batch = self.claim()
        except RelaysPausedError:  # operators' flag (event_log.control): claim nothing
            logger.info("relay_paused")
            return None, False
        except DATABASE_ERRORS as exc:
            self._db_failures += 1
            return None, self._wait_after_database_error(exc, self._db_failures, deadline, report)
        self._db_failures = 0
        if batch is None:
            report.drained = True
        return batch, batch is not None

    def _may_claim(
        self, deadline: float, max_batches: int | None, report: RelayReport, *, in_flight: int
    ) -> bool:
        """Whether the run may claim one more batch, ``in_flight`` being claimed already."""
        return time.monotonic() < deadline and (
            max_batches is None or report.batches + in_flight < max_batches
        )

    def _is_full(self, batch: Batch) -> bool:
        """A batch cut short by the byte cap is a full one: the backlog is not a trickle."""
        return (
            batch.rows >= self.config.BATCH_SIZE
            or len(batch.block) >= self.config.BATCH_MAX_BYTES // 2
        )

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

    def _insert(
        self, batch: Batch, deadline: float, report: RelayReport
    ) -> tuple[Inserted | None, bool]:
        """Step 2 of one attempt at one batch, behind the relay's one error boundary.

        Whatever fails — ClickHouse, PostgreSQL, the driver, a bug — the batch stays
        sealed and is postponed with back-off, and the loop goes on: no exception
        escapes a run. Returns what ClickHouse took (None after a failure) and False
        when the run should stop (its budget is spent).
        """
        log = logger.bind(batch_id=str(batch.id), rows=batch.rows, attempt=batch.attempts)
        if first_request_id := batch.first_request_id:
            # The run's own request_id (bound by the task) is the request that kicked it;
            # this is the one whose event the batch starts with (docs/operations.md).
            log = log.bind(first_request_id=first_request_id)
        started = time.perf_counter()
        with step("deliver batch", op="event_log.batch") as span:
            if span is not None:
                span.set_data("batch_id", str(batch.id))
                span.set_data("rows", batch.rows)
                span.set_data("attempt", batch.attempts)
            self.checkpoint("sealed", batch)
            try:
                with step("insert batch", op="db.clickhouse"):
                    delivery = self.write(batch)
            except RelaysPausedError:  # read by the lease renewal before the INSERT
                logger.info("relay_paused")
                self._give_back(batch)
                return None, False
            except Exception as exc:
                return None, self._fail(batch, exc, deadline, report, log)
        self.checkpoint("inserted", batch)
        delay = self._delay(batch, delivery.error) if delivery.left else 0.0
        entry = None
        if delivery.delivered is None:
            # The fast path's row digests, here rather than in the finish: while a backlog
            # drains, this thread has time to spare and the second connection has none.
            with step("digest rows", op="function"):
                entry = chain.pending_rows(chain.DELIVERY, batch.id, batch.lines())
        return Inserted(batch, delivery, delay, started, log, entry), True

    def _finish(self, inserted: Inserted) -> Finished | Exception:
        """Step 3, in PostgreSQL only (so in either thread): the outcome, or what failed.

        A database error closes this thread's connection; the next statement reconnects.
        """
        try:
            with step("delete batch"):
                return self.finish(
                    inserted.batch, inserted.delivery, delay=inserted.delay, entry=inserted.entry
                )
        except Exception as exc:
            if isinstance(exc, DATABASE_ERRORS):
                connection.close()
            return exc

    def _claim_ahead(self) -> Batch | None:
        """The second connection's claim, while a batch is inserted. A claim that cannot
        be made here (relays paused, the database failing) is left to the relay's own
        claim, which reports it."""
        try:
            with step("seal batch"):
                return self.claim()
        except RelaysPausedError:
            return None
        except DATABASE_ERRORS:
            connection.close()
            return None

    def _account(self, finishing: Finishing | None, deadline: float, report: RelayReport) -> bool:
        """Wait for a finish on the second connection and account for it (``_finished``)."""
        if finishing is None:
            return True
        return self._finished(finishing.inserted, finishing.outcome.result(), deadline, report)

    def _finished(
        self,
        inserted: Inserted,
        outcome: Finished | Exception,
        deadline: float,
        report: RelayReport,
    ) -> bool:
        """Account for a finished batch (or hand its failure to the error boundary)."""
        batch, delivery, log = inserted.batch, inserted.delivery, inserted.log
        if isinstance(outcome, Exception):
            return self._fail(batch, outcome, deadline, report, log)
        self._uncopied.extend(outcome.entries)
        if len(self._uncopied) >= CHAIN_COPY_ENTRIES:
            self._copy_chain_entries()
        self.checkpoint("finished", batch)
        self._partial_sent_at = None if self._is_full(batch) else time.monotonic()
        duration = time.perf_counter() - inserted.started
        BATCH_DURATION.observe(duration)
        report.batches += 1
        report.delivered += outcome.deleted
        report.dead_lettered += outcome.dead_lettered
        if delivery.rejected:
            first_error = next(iter(delivery.rejected.values()))
            log.error(
                "outbox_events_dead_lettered",
                dead_lettered=outcome.dead_lettered,
                error=first_error.summary,
                error_code=first_error.code,
            )
            capture(first_error, batch, dead_lettered=outcome.dead_lettered)
        if delivery.left:
            report.failures += 1
            report.errors.append(describe(delivery.error))
            log.warning(
                "outbox_batch_partly_delivered",
                delivered=outcome.deleted,
                left=delivery.left,
                error=describe(delivery.error),
            )
        log.info(
            "outbox_batch_delivered",
            delivered=outcome.deleted,
            duration_ms=round(duration * 1000, 3),
        )
        return True

    def _give_back(self, batch: Batch) -> None:
        """Release a batch this run will not send (sealed ahead, or held when relays
        were paused): any relay may take it now, or once relays resume (its next
        attempt looks its rows up first, ADR 0009)."""
        try:
            release(batch, delay=0.0, error="")
        except DATABASE_ERRORS:
            connection.close()  # its lease then runs out by itself; nothing is lost

    def _fail(
        self,
        batch: Batch,
        exc: Exception,
        deadline: float,
        report: RelayReport,
        log: structlog.stdlib.BoundLogger,
    ) -> bool:
        """The relay's one error boundary: what any failure of a step means for the batch."""
        if isinstance(exc, LeaseLostError):
            report.leases_lost += 1
            log.warning("outbox_batch_lease_lost")
            return True
        if isinstance(exc, ClickHouseError):
            return self._postpone(batch, exc, deadline, report, log)
        if isinstance(exc, DATABASE_ERRORS):
            return self._postpone(batch, exc, deadline, report, log, database=True)
        # A driver's own exception or a bug: the outbox must not wedge on it either.
        log.exception("outbox_batch_crashed", error=str(exc))
        return self._postpone(batch, exc, deadline, report, log)

    def _delay(self, batch: Batch, error: BaseException | None) -> float:
        """How long the batch waits before its next attempt."""
        delay = backoff_delay(
            batch.attempts, initial=self.config.BACKOFF_INITIAL, cap=self.config.BACKOFF_MAX
        )
        if isinstance(error, ClickHouseError) and error.timed_out and not self._embedded_engine_url:
            # The outcome is unknown and the server may still be working on the INSERT
            # (up to max_execution_time): nobody looks the rows up before it is done.
            delay = max(delay, self.config.INSERT_TIMEOUT)
        return delay

    def _postpone(
        self,
        batch: Batch,
        error: BaseException,
        deadline: float,
        report: RelayReport,
        log: structlog.stdlib.BoundLogger,
        *,
        database: bool = False,
    ) -> bool:
        delay = self._delay(batch, error)
        failure = error if isinstance(error, ClickHouseError) else ClickHouseError(str(error))
        text = describe(error)
        report.failures += 1
        report.errors.append(text)
        BATCH_FAILURES.inc()
        stuck = batch.attempts >= self.config.ALERT_AFTER_ATTEMPTS
        fields = {
            "error": text,
            "error_code": getattr(error, "code", None) if not database else None,
            "error_type": type(error).__name__,
            "retry_in_s": round(delay, 3),
        }
        if stuck:
            BATCHES_STUCK.inc()
            log.error("outbox_batch_stuck", **fields)
        else:
            log.warning("outbox_batch_failed", **fields)
        capture(failure, batch, retry_in_s=round(delay, 3), stuck=stuck)
        if database:
            connection.close()
        else:
            self._drop_client()
        try:
            release(batch, delay=delay, error=text)
        except DATABASE_ERRORS:
            connection.close()  # the lease then expires by itself; nothing is lost
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
