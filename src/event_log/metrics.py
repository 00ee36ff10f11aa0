"""Prometheus metrics of the event log.

Outbox gauges and delivery counters are read from PostgreSQL at scrape time, in
constant time (``event_log.status``), so they are right however many relays run, in
whatever processes or machines, and a scrape stays fast however long the backlog.
The batch-duration histogram and the published-events counter are measured
where the work happens; with several processes on one host set
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and the
web process exposes the sum.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from event_log.status import EXACT_COUNT_LIMIT, outbox_status

EVENTS_PUBLISHED = Counter(
    "event_log_events_published",
    "Events written to the outbox by committed or pending transactions in this host's processes.",
)
BATCH_DURATION = Histogram(
    "event_log_batch_duration_seconds",
    "Time to deliver one batch: ClickHouse insert plus PostgreSQL delete.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_FAILURES = Counter(
    "event_log_batch_failures",
    "Batch attempts that failed transiently and were postponed.",
)
BATCHES_STUCK = Counter(
    "event_log_batch_stuck_failures",
    "Failed attempts of batches that had already been tried EVENT_LOG_ALERT_AFTER_ATTEMPTS "
    "times (an alert: something this batch holds keeps failing).",
)


class OutboxCollector(Collector):
    """Gauges and counters computed from the outbox tables at scrape time."""

    def collect(self) -> Iterator[Metric]:
        status = outbox_status()
        gauges = {
            "event_log_outbox_depth": (
                f"Events not yet in ClickHouse: exact up to {EXACT_COUNT_LIMIT}, "
                "above that an upper bound (the span of their ids).",
                status.outbox_depth,
            ),
            "event_log_lag_seconds": (
                "Age of the oldest event not yet in ClickHouse.",
                status.lag_seconds,
            ),
            "event_log_batches_in_flight": (
                "Sealed batches not yet delivered.",
                status.batches_in_flight,
            ),
            "event_log_batches_stuck": (
                "Sealed batches tried EVENT_LOG_ALERT_AFTER_ATTEMPTS times or more.",
                status.batches_stuck,
            ),
            "event_log_dead_letters": (
                f"Events in the dead-letter table: exact up to {EXACT_COUNT_LIMIT}, "
                "above that an upper bound (the span of their ids).",
                status.dead_letters,
            ),
            "event_log_relays_paused": (
                "1 while operators have paused every relay (nothing is delivered), else 0.",
                1.0 if status.relays_paused else 0.0,
            ),
            "event_log_last_delivery_timestamp_seconds": (
                "Unix time of the last delivered batch (0 if none).",
                status.last_delivered_at.timestamp() if status.last_delivered_at else 0.0,
            ),
        }
        for name, (documentation, value) in gauges.items():
            yield GaugeMetricFamily(name, documentation, value=value)
        counters = {
            "event_log_events_delivered": ("Events stored in ClickHouse.", status.events_delivered),
            "event_log_events_dead_lettered": (
                "Events moved to the dead-letter table.",
                status.events_dead_lettered,
            ),
            "event_log_batches_delivered": ("Batches delivered.", status.batches_delivered),
        }
        for name, (documentation, value) in counters.items():
            yield CounterMetricFamily(name, documentation, value=value)


class VerifyCollector(Collector):
    """The latest ``event_log_verify`` outcome, read from PostgreSQL at scrape time."""

    def collect(self) -> Iterator[Metric]:
        from event_log.models import Verification  # noqa: PLC0415 (apps are loaded by now)

        latest = Verification.objects.order_by("-verified_at").first()
        yield GaugeMetricFamily(
            "event_log_verify_failures",
            "Findings of the latest verification: event ids duplicated in ClickHouse, "
            "missing from it, altered or extra there, and batch chain breaks (0 when clean "
            "or never run).",
            value=latest.failures if latest else 0,
        )
        yield GaugeMetricFamily(
            "event_log_verify_chain_breaks",
            "Breaks in the batch chain the latest verification found: rewritten or missing "
            "ledger entries, a head that is not the last entry (0 when intact or never run).",
            value=latest.chain_breaks if latest else 0,
        )
        yield GaugeMetricFamily(
            "event_log_verify_last_run_timestamp_seconds",
            "Unix time of the latest verification (0 if none).",
            value=latest.verified_at.timestamp() if latest else 0.0,
        )


def render_metrics(extra: tuple[Collector, ...] = ()) -> tuple[bytes, str]:
    """The exposition text and its content type; ``extra`` adds this process's
    collectors of other apps (ignored in multiprocess mode, which reads them all)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = _with_default(registry)
        for collector in extra:
            registry.register(collector)
    registry.register(OutboxCollector())
    registry.register(VerifyCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _with_default(registry: CollectorRegistry) -> CollectorRegistry:
    for collector in (EVENTS_PUBLISHED, BATCH_DURATION, BATCH_FAILURES, BATCHES_STUCK):
        registry.register(collector)
    return registry
