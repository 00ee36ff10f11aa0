"""Per-client rate limits that hold under concurrency.

Each client (``core.client_address.rate_limit_key``) gets a counter per fixed window
in the shared cache, raised with one atomic ``INCR``: N concurrent requests see N
distinct counts, so exactly ``limit`` of them pass, where a read-then-write history
(django-ninja's throttles) let several racing requests read the same count.

When the cache cannot be reached the limiter stays open for availability, but each
process then counts on its own with the same limit (a ceiling per process, not per
fleet), counts the fallback in ``api_rate_limit_fallbacks_total`` and logs
``rate_limit_degraded``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from django.core.cache import cache
from django.http import HttpRequest
from ninja.throttling import BaseThrottle
from prometheus_client import Counter

from core.client_address import client_address, rate_limit_key

logger = structlog.get_logger(__name__)

FALLBACKS = Counter(
    "api_rate_limit_fallbacks",
    "Rate-limit decisions taken by a process-local counter because the cache was unreachable.",
)

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"5/min"`` → ``(5, 60)``: requests allowed per window of that many seconds."""
    count, _, unit = rate.partition("/")
    return int(count), _UNITS[unit.strip().lower()]


class LocalCounters:
    """Fixed-window counters of this process only, for when the cache is down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._window: int | None = None

    def incr(self, key: str, window: int) -> int:
        with self._lock:
            if window != self._window:  # a new window forgets the old one: bounded memory
                self._counts.clear()
                self._window = window
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]


class FixedWindowThrottle(BaseThrottle):
    """A django-ninja throttle: at most ``rate()`` requests per client and window.

    Safe to share between threads (one instance serves every request of an
    operation): nothing about a request is kept on the instance but the wait of the
    thread's last refusal.
    """

    def __init__(self, *, scope: str, rate: Callable[[], str]) -> None:
        self.scope = scope
        self.rate = rate
        self.local = LocalCounters()
        self._last = threading.local()

    def allow_request(self, request: HttpRequest) -> bool:
        limit, duration = parse_rate(self.rate())
        now = time.time()
        window = int(now // duration)
        client = rate_limit_key(client_address(request))
        key = f"rate:{self.scope}:{client}:{window}"
        try:
            # add() sets the counter with its expiry only if it is missing; incr() is
            # Redis INCR, atomic across every process.
            cache.add(key, 0, timeout=duration + 1)
            count = int(cache.incr(key))
        except Exception as exc:  # the cache is down or evicted the key: count locally
            FALLBACKS.inc()
            logger.warning("rate_limit_degraded", scope=self.scope, error=type(exc).__name__)
            count = self.local.incr(key, window)
        self._last.wait = (window + 1) * duration - now
        return count <= limit

    def wait(self) -> float | None:
        return getattr(self._last, "wait", None)


__all__ = ["FALLBACKS", "FixedWindowThrottle", "LocalCounters", "parse_rate"]
