"""8. The batch chain's cost: relay throughput with and without it, and one verification.

- **Throughput**: the same backlog drained by the real relay as shipped (each finish
  computes the batch's row digests, appends an entry under the chain head's row lock
  and copies it to ClickHouse) and by the same relay with the chain switched off
  (``event_log.chain.pending_rows`` answering None, so no entry is appended or
  copied), with 1 and 2 relays, interleaved round by round; medians count. The gap
  at 2 relays includes their waits on the head's lock, the chain's one
  serialisation point.
- **Verification**: a backlog of ``verify_events`` drained by the relay, then
  ``event_log.verify.verify_log`` over the window of that drain (delivery records,
  chain walk, every row's digest recomputed by ClickHouse and compared): seconds,
  rows per second and the process's peak RSS growth; and the delivery records'
  check alone (``verify_deliveries``, the verification before the chain), for scale.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from statistics import median
from typing import Any

import throughput
from harness import BenchEnv, ClickHouseProbe, fill_backlog, peak_rss_mb, settle_postgres


@contextlib.contextmanager
def _chain_off() -> Iterator[None]:
    from event_log import chain  # noqa: PLC0415

    original = chain.pending_rows
    chain.pending_rows = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        chain.pending_rows = original  # type: ignore[assignment]


def _one_drain(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    *,
    chained: bool,
    batch: int,
    workers: int,
    backlog: int,
) -> dict[str, Any]:
    switch = contextlib.nullcontext() if chained else _chain_off()
    with switch:
        result = throughput._one_run(
            bench, probe, "relay", batch=batch, workers=workers, backlog=backlog
        )
    result["chain"] = chained
    return result


def run(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    *,
    backlog: int,
    batch_size: int,
    rounds: int,
    verify_events: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for round_ in range(rounds):
        for workers in (1, 2):
            for chained in (True, False):
                result = _one_drain(
                    bench,
                    probe,
                    chained=chained,
                    batch=batch_size,
                    workers=workers,
                    backlog=backlog,
                )
                result["round"] = round_ + 1
                runs.append(result)
                progress(
                    f"  {'chain' if chained else 'no chain':8} batch {batch_size:,} x{workers} "
                    f"(round {round_ + 1}): {result['events_per_s']:>9,.0f} ev/s  "
                    f"{'OK' if result['exactly_once'] else 'FAIL'}"
                )
    comparisons = []
    for workers in (1, 2):
        rates = {
            chained: [
                r["events_per_s"] for r in runs if (r["chain"], r["workers"]) == (chained, workers)
            ]
            for chained in (True, False)
        }
        comparisons.append(
            {
                "workers": workers,
                "chain_events_per_s": median(rates[True]),
                "no_chain_events_per_s": median(rates[False]),
                "ratio": median(rates[True]) / median(rates[False]),
            }
        )
    progress(f"  verification of {verify_events:,} delivered events")
    verification = _verify_cost(probe, events=verify_events, batch_size=batch_size)
    return {
        "backlog": backlog,
        "batch_size": batch_size,
        "runs": runs,
        "comparisons": comparisons,
        "verification": verification,
    }


def _verify_cost(probe: ClickHouseProbe, *, events: int, batch_size: int) -> dict[str, Any]:
    from event_log.conf import event_log_settings  # noqa: PLC0415
    from event_log.relay import Relay  # noqa: PLC0415
    from event_log.verify import verify_deliveries, verify_log  # noqa: PLC0415

    probe.truncate()
    since = datetime.now(UTC)
    fill_backlog(events)
    settle_postgres()
    relay = Relay(config=event_log_settings(BATCH_SIZE=batch_size, TIME_BUDGET=3600))
    try:
        drained = relay.run()
    finally:
        relay.close()
    started = time.perf_counter()
    verify_deliveries(since=since)  # the delivery records' check alone, for comparison
    records_seconds = time.perf_counter() - started
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    report = verify_log(since=since)
    seconds = time.perf_counter() - started
    assert report.chain is not None
    return {
        "events": drained.delivered,
        "batches": drained.batches,
        "seconds": seconds,
        "delivery_records_seconds": records_seconds,
        "rows_per_s": drained.delivered / seconds,
        "peak_rss_growth_mb": peak_rss_mb() - rss_before,
        "clean": report.clean,
        "entries": report.chain.entries,
        "findings": report.failures,
    }
