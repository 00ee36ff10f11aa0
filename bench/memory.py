"""5. Memory: the resident set of one relay process draining a large backlog.

The backlog (copies of events published through ``publish()``, each with a
fresh event id) is written by this process, which then
closes its ClickHouse client and starts ``bench/relay_memory.py``: a fresh
process running ``event_log.relay.Relay`` with the configured batch size, which
owns the embedded engine (so its RSS includes ClickHouse's own memory, as a
relay's does in embedded mode). The drain is checked afterwards: the set of
event ids in ClickHouse equals the set written, with as many rows, and the
outbox is empty.

"Start" is the RSS after the first delivered batch (Django, the engine and the
first batch's buffers are all there); "flat" means that the resident set stays
within a few MiB of that however many events follow. The drain runs twice,
each time on a fresh backlog: as deployed, then with the relay's release of
the engine's freed memory switched off (``--no-engine-memory-release``), to
show what the release does. The trend (median RSS of
the last tenth of the samples minus that of the first tenth) tells a resident
set that grows with the events relayed from one that moves within a band.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    BenchEnv,
    ClickHouseProbe,
    exactly_once,
    fill_backlog,
    outbox_depth,
    percentile,
    settle_postgres,
)

CHILD = Path(__file__).resolve().parent / "relay_memory.py"


def run(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    workdir: Path,
    *,
    events: int,
    sample_every: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Drain as deployed, then (embedded engine only) with the memory release switched off."""
    result = _drain(
        bench, probe, workdir, events=events, sample_every=sample_every, progress=progress
    )
    if bench.clickhouse_dir is None:
        return result  # a server: the relay never releases engine memory
    without = _drain(
        bench,
        probe,
        workdir,
        events=events,
        sample_every=sample_every,
        progress=progress,
        release=False,
    )
    result["without_release"] = {
        key: without[key]
        for key in (
            "exactly_once",
            "check",
            "start_mb",
            "max_mb",
            "min_mb",
            "end_mb",
            "max_minus_min_mb",
            "max_minus_start_mb",
            "vm_hwm_mb",
            "events_per_s",
            "first_tenth_median_mb",
            "last_tenth_median_mb",
            "trend_mb",
        )
    }
    return result


def _drain(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    workdir: Path,
    *,
    events: int,
    sample_every: int,
    progress: Callable[[str], None],
    release: bool = True,
) -> dict[str, Any]:
    probe.truncate()
    published = fill_backlog(events)
    settle_postgres()
    progress(
        f"  published {len(published):,} events; relay process draining them"
        + ("" if release else " (engine memory release off)")
    )
    log = workdir / ("memory-relay.log" if release else "memory-relay-no-release.log")
    argv = [sys.executable, str(CHILD), "--sample-every", str(sample_every)]
    with log.open("wb") as stderr:
        completed = subprocess.run(
            argv if release else [*argv, "--no-engine-memory-release"],
            env=bench.child_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=1800,
            check=False,
        )
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"relay process failed ({completed.returncode}):\n{tail}")
    child = json.loads(completed.stdout.strip().splitlines()[-1])
    once, detail = exactly_once(probe, published)
    left = outbox_depth()
    ok = once and left == 0
    rss = [sample[2] for sample in child["samples"]]
    start, end = rss[0], rss[-1]
    result = {
        **child,
        "published": len(published),
        "exactly_once": ok,
        "check": f"{detail}; {left} left in the outbox",
        "start_mb": start,
        "max_mb": max(rss),
        "min_mb": min(rss),
        "end_mb": end,
        "max_minus_min_mb": max(rss) - min(rss),
        "max_minus_start_mb": max(rss) - start,
        "start_minus_min_mb": start - min(rss),
        "events_per_s": child["events"] / child["seconds"],
        # After the first tenth of the drain: the engine's caches and merge buffers
        # have grown to their working size; what follows shows whether RSS tracks
        # the number of events relayed (a leak) or stays put.
        "steady_from_events": child["samples"][len(rss) // 10][1],
        "steady_min_mb": min(rss[len(rss) // 10 :]),
        "steady_max_mb": max(rss[len(rss) // 10 :]),
        "steady_drift_mb": end - rss[len(rss) // 10],
        # Whether RSS follows the number of events relayed: the typical level of
        # the first tenth of the drain against that of the last tenth.
        "first_tenth_median_mb": percentile(rss[: max(1, len(rss) // 10)], 50),
        "last_tenth_median_mb": percentile(rss[-max(1, len(rss) // 10) :], 50),
    }
    result["trend_mb"] = result["last_tenth_median_mb"] - result["first_tenth_median_mb"]
    probe.truncate()
    return result
