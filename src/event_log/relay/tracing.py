"""Sentry for the relay: a span per run and batch, a captured error per failed batch."""

from __future__ import annotations

from typing import Any

import sentry_sdk

from event_log.clickhouse import ClickHouseError
from event_log.relay.batch import Batch


def trace(op: str, name: str) -> Any:
    """A span under the current transaction (a Celery task's), or a transaction of its own."""
    if sentry_sdk.get_current_span() is not None:
        return sentry_sdk.start_span(op=op, name=name)
    return sentry_sdk.start_transaction(op=op, name=name)


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
