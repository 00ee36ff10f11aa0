from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import structlog
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.control import relays_paused
from event_log.relay import Relay, RelayReport
from event_log.status import outbox_status, pending_batches

logger = structlog.get_logger(__name__)

# Exit status of --once (documented in docs/operations.md): 0 the outbox is empty,
# 1 the relay could not run (ClickHouse unreachable at start, PostgreSQL down),
# 3 it ran and events are left (a batch backing off, or held by another relay).
EXIT_EVENTS_LEFT = 3
# How many of the batches left --once describes one by one.
BATCHES_SHOWN = 10


class Command(BaseCommand):
    help = (
        "Relay outbox events to ClickHouse. --once drains and exits (0: outbox empty, "
        "1: could not run, 3: events left); otherwise runs until SIGTERM/SIGINT, finishing "
        "the batch in hand."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="drain the outbox, then exit")
        parser.add_argument(
            "--idle-sleep",
            type=float,
            default=None,
            help="seconds to wait when the outbox is empty (default EVENT_LOG_RELAY_INTERVAL)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        relay = Relay()
        url = clickhouse.clickhouse_url()
        try:
            relay.connect_clickhouse()
        except ClickHouseError as exc:
            message = f"cannot reach ClickHouse at {clickhouse.mask_url(url)}: {exc}"
            if options["once"]:
                self._describe_left()
                raise CommandError(message) from None
            # A long-running relay waits it out: events stay safe in the outbox.
            self.stderr.write(f"{message} (retrying with back-off)")
            logger.error("relay_clickhouse_unreachable", clickhouse_url=clickhouse.mask_url(url))
        try:
            if options["once"]:
                self._once(relay)
            else:
                self._forever(relay, options["idle_sleep"])
        finally:
            relay.close()

    def _once(self, relay: Relay) -> None:
        """Drain until no batch can be taken; exit 3 if events are left all the same."""
        total = 0
        while True:
            report = relay.run()
            total += report.delivered
            # Drained: nothing left that a relay may take now. Failing with nothing
            # delivered: the batch is postponed and the next run would find it leased.
            if report.drained or (report.failures and not report.batches):
                break
            if _returned_unclaimed(report) and relays_paused():
                self.stderr.write("relays are paused (manage.py event_log_relays resume)")
                break
        self.stdout.write(f"delivered {total} events")
        if self._describe_left():
            raise CommandError("events are left in the outbox", returncode=EXIT_EVENTS_LEFT)

    def _describe_left(self) -> bool:
        """Write to stderr what is left in the outbox; False when it is empty."""
        try:
            status = outbox_status()
            batches = pending_batches(limit=BATCHES_SHOWN)
        except DatabaseError as exc:
            raise CommandError(f"cannot read the outbox: {exc}") from None
        if not status.outbox_depth:
            return False
        bound = "" if status.outbox_depth_exact else "at most "
        self.stderr.write(
            f"left in the outbox: {bound}{status.outbox_depth} events, the oldest "
            f"{status.lag_seconds:.1f} s old; sealed batches: {status.batches_in_flight}"
        )
        for batch in batches:
            if not batch.leased:
                state = "lease expired, the next relay run takes it"
            elif batch.last_error:
                state = f"backing off until {batch.lease_until.isoformat()}"
            else:
                state = f"held by a relay until {batch.lease_until.isoformat()}"
            line = f"  batch {batch.id} (attempt {batch.attempts}, ids {batch.first_id}-"
            line += f"{batch.last_id}): {state}"
            if batch.last_error:
                line += f"; last error: {batch.last_error[:300]}"
            self.stderr.write(line)
        if status.batches_in_flight > len(batches):
            self.stderr.write(f"  and {status.batches_in_flight - len(batches)} more batches")
        return True

    def _forever(self, relay: Relay, idle_sleep: float | None) -> None:
        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        idle = relay.config.RELAY_INTERVAL if idle_sleep is None else idle_sleep
        logger.info(
            "relay_started", clickhouse_url=clickhouse.mask_url(clickhouse.clickhouse_url())
        )
        # The loop checks the flag between batches: a signal lets the batch in hand finish.
        relay.sleep = lambda seconds: _sleep_unless(lambda: stopping, seconds)
        while not stopping:
            report = relay.run(max_batches=1)
            if report.drained or _returned_unclaimed(report):  # empty, or relays paused
                _sleep_unless(lambda: stopping, idle)
        logger.info("relay_stopped")


def _returned_unclaimed(report: RelayReport) -> bool:
    """The run claimed nothing and met nothing: it found the relays paused."""
    return not (report.drained or report.batches or report.failures or report.leases_lost)


def _sleep_unless(stop: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
