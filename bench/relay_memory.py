"""Child process of the memory benchmark: one relay drains the outbox, sampling its RSS.

Started by ``bench/run.py`` with the bench's environment (databases, settings).
It owns the embedded ClickHouse engine for its lifetime, like a relay process in
production, and prints one JSON document on its last line of output.

RSS comes from ``/proc/self/status`` (``VmRSS``; ``VmHWM`` is the kernel's own
peak), read every ``--sample-every`` batches between ``Relay.run()`` calls.
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
    args = parser.parse_args()

    before_django = rss_mb()
    sys.path.insert(0, str(SRC))
    import django  # noqa: PLC0415

    django.setup()
    from event_log.relay import Relay  # noqa: PLC0415

    relay = Relay()
    relay.connect_clickhouse()
    engine_open = rss_mb()
    samples: list[tuple[int, int, float]] = []  # (batches, events, rss MiB)
    batches = events = 0
    started = time.perf_counter()
    try:
        while True:
            # A budget, so that a relay stuck on a failing batch returns and is reported.
            report = relay.run(time_budget=120, max_batches=args.sample_every)
            if report.failures:
                raise SystemExit(f"relay failed: {report.errors[-1]}")
            batches += report.batches
            events += report.delivered
            if report.batches:
                samples.append((batches, events, rss_mb()))
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
