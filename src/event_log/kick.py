"""The on-commit kick: ask for a relay run soon after events commit, debounced.

A flag in the shared cache (Redis) says "a relay run is queued and has not
started yet". A commit that finds the flag set does nothing: the queued run
starts after that commit and will see its events. The relay task clears the
flag when it *starts*, so a commit during a run queues the next one. However
many transactions commit, at most one kick waits in the queue at a time.

The commit itself only sets a flag for a background thread of the process
(:func:`kick_on_commit`); that thread talks to Redis and the broker, so a slow or
absent Redis never adds to a request's time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import structlog
from django.core.cache import cache
from django.db import connections, transaction

from event_log.conf import event_log_settings

logger = structlog.get_logger(__name__)

KICK_PENDING_KEY = "event_log:relay_kick_pending"
# If a queued kick is lost (worker gone), new kicks resume after this many seconds;
# Beat covers the gap meanwhile.
KICK_PENDING_TTL = 30


# After a failed kick (Redis or the broker unreachable) this process stops kicking
# for a while, so that an outage costs one failed attempt, not one per request.
PAUSE_AFTER_FAILURE_S = 10.0
_paused_until = 0.0


def request_relay_run() -> bool:
    """Queue one relay run unless one is already queued; True when this call queued it.

    Never raises and never retries: the commit is done, and Celery Beat runs the
    relay anyway. A failure pauses kicking in this process for a few seconds.
    """
    if not event_log_settings().KICK_ENABLED or kicks_paused():
        return False
    try:
        if not cache.add(KICK_PENDING_KEY, 1, timeout=KICK_PENDING_TTL):
            return False
    except Exception as exc:
        _pause(exc)
        return False
    try:
        from event_log.tasks import relay_outbox  # noqa: PLC0415 (Celery only when kicking)

        relay_outbox.apply_async(kwargs={"kicked": True}, ignore_result=True, retry=False)
    except Exception as exc:
        _pause(exc)
        _clear_flag()
        return False
    return True


def kicks_paused() -> bool:
    return time.monotonic() < _paused_until


def _pause(exc: Exception) -> None:
    global _paused_until  # noqa: PLW0603
    _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
    logger.warning("relay_kick_failed", error=str(exc), paused_s=PAUSE_AFTER_FAILURE_S)


def _clear_flag() -> None:
    try:
        cache.delete(KICK_PENDING_KEY)
    except Exception as exc:  # the flag expires by itself
        logger.warning("relay_kick_flag_not_cleared", error=str(exc))


def kick_started() -> None:
    """Called by a relay run as it starts: later commits may queue the next run."""
    _clear_flag()


def relay_run_on_commit(using: str) -> None:
    """Register :func:`kick_on_commit` once per transaction (savepoints included)."""
    # Django keeps pending callbacks as (savepoint ids, callable, robust) tuples;
    # a rolled-back savepoint removes its own, so this check stays accurate.
    if any(func is kick_on_commit for _, func, *_ in connections[using].run_on_commit):
        return
    transaction.on_commit(kick_on_commit, using=using, robust=True)


def kick_on_commit() -> None:
    """The callback registered with ``transaction.on_commit``: hands the kick to a
    background thread, so that the request pays nothing for Redis or the broker."""
    if event_log_settings().KICK_ENABLED:
        _KICKER.wake(structlog.contextvars.get_contextvars())


class _Kicker:
    """One daemon thread per process that sends kicks; wake-ups while it works coalesce.

    Started lazily, and again in a forked child (gunicorn, Celery prefork), where the
    parent's thread does not exist.
    """

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        # The log context (request id, …) of the latest commit, carried into the task.
        self._context: dict[str, Any] = {}

    def wake(self, context: dict[str, Any]) -> None:
        if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
            self._start()
        self._context = context
        self._wanted.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._wanted = threading.Event()
            self._thread = threading.Thread(target=self._loop, name="event-log-kicker", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                with structlog.contextvars.bound_contextvars(**self._context):
                    request_relay_run()
            except Exception as exc:  # pragma: no cover - request_relay_run catches its own
                logger.warning("relay_kick_failed", error=str(exc))


_KICKER = _Kicker()
