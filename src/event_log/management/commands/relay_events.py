from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import structlog
from django.core.management.base import BaseCommand, CommandError, CommandParser

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.relay import Relay

logger = structlog.get_logger(__name__)


class Command(BaseCommand):
    help = (
        "Relay outbox events to ClickHouse. --once drains and exits; otherwise runs until "
        "SIGTERM/SIGINT, finishing the batch in hand."
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
        total = 0
        while True:
            report = relay.run()
            total += report.delivered
            if report.drained:
                break
            if report.failures and not report.batches:
                raise CommandError(f"relay failed: {report.errors[-1]}")
        self.stdout.write(f"delivered {total} events")

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
            if report.drained:
                _sleep_unless(lambda: stopping, idle)
        logger.info("relay_stopped")


def _sleep_unless(stop: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
