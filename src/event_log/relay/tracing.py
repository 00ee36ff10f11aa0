"""Sentry for the relay: a span per run and batch, a captured error per failed batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import sentry_sdk

from event_log.clickhouse import ClickHouseError
from event_log.relay.batch import Batch


def trace(op: str, name: str) -> Any:
    """A span under the current transaction (a Celery task's), or a transaction of its own."""
    if sentry_sdk.get_current_span() is not None:
        return sentry_sdk.start_span(op=op, name=name)
    return sentry_sdk.start_transaction(op=op, name=name)


# Called with (step, seconds) as each step of a batch ends: how `make bench` splits a
# batch's time between seal, copy, lease renewal, insert and finish. Empty in service.
StepObserver = Callable[[str, float], None]
step_observers: list[StepObserver] = []


@contextmanager
def step(name: str, *, op: str = "db") -> Iterator[Any]:
    """A Sentry span for one step of a batch; its duration also goes to ``step_observers``.

    Steps may nest (the lease renewal runs inside the insert step): each observer gets
    the time of each step, inner ones included in outer ones.
    """
    started = time.perf_counter()
    try:
        # Without Sentry (no DSN) a span is built for nobody, at about 20 µs each.
        with (
            sentry_sdk.start_span(op=op, name=f"event_log {name}")
            if sentry_sdk.get_client().is_active()
            else nullcontext()
        ) as span:
            yield span
    finally:
        for observe in step_observers:
            observe(name, time.perf_counter() - started)


def capture(error: ClickHouseError, batch: Batch, **extra: Any) -> None:
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
                "clickhouse_error": error.summary,
                "clickhouse_error_code": error.code,
                "transient": error.transient,
                **extra,
            },
        )
        # A copy that says what the original says, without the rows it may quote.
        sentry_sdk.capture_exception(ClickHouseError(error.summary, code=error.code))
