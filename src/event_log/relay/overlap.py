"""Overlap: while one batch is inserted, seal the one after and finish the one before.

Draining a backlog, a relay's PostgreSQL work for a batch (seal, copy, finish) and its
ClickHouse INSERT take about as long as each other, and neither needs the other's
core: the INSERT waits on a socket or runs inside the embedded engine, which releases
the GIL. So while the relay's own thread inserts batch *n*, a second thread, with a
PostgreSQL connection of its own, seals batch *n + 1* and then finishes batch *n - 1*
(the finish goes on beside the next insert, which starts once its batch is sealed).

Each batch still goes through the same steps in the same order, under its own lease
and attempt number: three batches in flight in one relay are what three relays side
by side already are. Only full batches are overlapped (a partial one means the backlog
is gone), so a trickle is relayed one step at a time, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import sentry_sdk
import structlog
from django.db import connection


class SecondConnection:
    """One thread with a PostgreSQL connection of its own, opened on first use.

    Work runs with the caller's structlog context (the request id a task bound) and in
    a Sentry scope of its own whose span is the caller's current one, so its spans are
    children of the caller's without the two threads sharing one scope. (Not a copy of
    the caller's whole context: Django's connection would come along with it.)
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def submit[T](self, work: Callable[[], T]) -> Future[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-pg")
        bound = structlog.contextvars.get_contextvars()
        span = sentry_sdk.get_current_span()
        return self._executor.submit(_as_caller, work, bound, span)

    def close(self) -> None:
        """Close the thread's connection and end the thread (waits for work in progress)."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        try:
            executor.submit(_close_connection).result()
        finally:
            executor.shutdown(wait=True)


def _as_caller[T](work: Callable[[], T], bound: dict[str, Any], span: Any) -> T:
    with sentry_sdk.new_scope() as scope, structlog.contextvars.bound_contextvars(**bound):
        scope.span = span
        return work()


def _close_connection() -> None:
    # Looked up here, in the thread: ``connection`` resolves per thread, so a bound
    # ``connection.close`` taken in the caller's thread would close the caller's.
    connection.close()
