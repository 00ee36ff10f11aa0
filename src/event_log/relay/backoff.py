"""How long a batch waits after a transient failure."""

from __future__ import annotations

import random

# 2.0**64 times any sane initial delay is far past any cap, and far from overflow.
MAX_DOUBLINGS = 64


def backoff_delay(attempt: int, *, initial: float, cap: float) -> float:
    """Exponential back-off with jitter in [50 %, 100 %] of the step, capped.

    The exponent is bounded before it is used: a batch retried for days (thousands
    of attempts) must not overflow a float before the cap applies.
    """
    step = min(cap, initial * 2.0 ** min(max(0, attempt - 1), MAX_DOUBLINGS))
    return step * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)
