"""Child process of the memory benchmark: one relay drains the outbox, sampling its RSS.

Started by ``bench/run.py`` with the bench's environment (databases, settings).
It owns the embedded ClickHouse engine for its lifetime, like a relay process in
production, and prints one JSON document on its last line of output.

The relay runs as the Celery task runs it: ``Relay.run()`` with the configured
time budget, again until the outbox is empty. RSS comes from
``/proc/self/status`` (``VmRSS``; ``VmHWM`` is the kernel's own peak), read
every ``--sample-every`` batches as each batch is finished, before the relay
gives the embedded engine's freed memory back (at most once a second, and at
the end of each run): the samples show the top of the band, not its bottom.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SRC, peak_rss_mb, rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample-every", type=int, default=1, help="batches between samples")
    parser.add_argument(
        "--no-engine-memory-release",
        action="store_true",
        help="keep the engine's freed memory (for comparison: the relay releases it)",
    )
    args = parser.parse_args()

    before_django = rss_mb()
    sys.path.insert(0, str(SRC))
    import django  # noqa: PLC0415

    django.setup()
    from event_log.relay import Batch, Relay  # noqa: PLC0415

    samples: list[tuple[int, int, float]] = []  # (batches, events, rss MiB)
    batches = events = runs = 0

    def sample(step: str, batch: Batch) -> None:
        nonlocal batches, events
        if step != "finished":
            return
        batches += 1
        events += batch.rows
        if batches % args.sample_every == 0:
            samples.append((batches, events, rss_mb()))

    relay = Relay(checkpoint=sample)
    if args.no_engine_memory_release:
        relay._embedded_engine = False  # the comparison needs the switch
    relay.connect_clickhouse()
    engine_open = rss_mb()
    started = time.perf_counter()
    try:
        while True:
            report = relay.run()
            runs += 1
            if report.failures:
                raise SystemExit(f"relay failed: {report.errors[-1]}")
            if report.drained:
                break
    finally:
        relay.close()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "batch_size": relay.config.BATCH_SIZE,
                "batches": batches,
                "runs": runs,
                "time_budget_s": relay.config.TIME_BUDGET,
                "events": events,
                "seconds": seconds,
                "rss_before_django_mb": before_django,
                "rss_engine_open_mb": engine_open,
                "samples": samples,
                "vm_hwm_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
