"""How long a batch waits after a transient failure."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, initial: float, cap: float) -> float:
    """Exponential back-off with full jitter in [50 %, 100 %] of the step, capped."""
    step = min(cap, initial * 2 ** max(0, attempt - 1))
    return step * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)
