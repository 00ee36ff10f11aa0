"""Benchmarks of the event log, all in one run: ``make bench`` (or ``python bench/run.py``).

1. publish overhead — a business transaction with no event, with the outbox,
   and with the old direct ClickHouse insert;
2. relay throughput — draining a backlog at several batch sizes, 1 and 2 relays,
   next to a minimal hand-written relay, with an exactly-once check per run;
3. latency — commit to delivered at a steady rate, with the on-commit kick and
   with Beat alone, through a real Celery worker;
4. insert economy — ClickHouse INSERTs per 10,000 events under load and idle;
5. memory — RSS of one relay process draining a large backlog;
6. fsync — the same INSERTs into a table with fsync on insert and one without;
7. load — the deployed service under HTTP load and a ClickHouse outage
   (``make loadtest``, ``loadtest``);
8. lookup — the envelope's lookups (subject, request, actor) on millions of rows,
   with and without the skip indexes (``envelope_lookup``).
9. chain — relay throughput with and without the batch chain, and the cost of
   ``event_log_verify`` over a million delivered events (``chain_cost``).

The run uses databases of its own (see ``harness``), prints a table and writes
the same figures as JSON to ``bench/results/bench-<UTC timestamp>.json`` and
``bench/results/latest.json`` (plus the table as ``.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chain_cost
import envelope_lookup
import fsync_cost
import harness
import latency
import loadtest
import memory
import publish_overhead
import report
import throughput

SECTIONS = ("publish", "throughput", "latency", "memory", "fsync", "load", "lookup", "chain")


@dataclass(frozen=True, slots=True)
class Sizes:
    publish_rounds: int
    publish_warmup: int
    backlog: int
    batch_sizes: tuple[int, ...]
    repeats: dict[int, int]
    rate: float
    seconds: float
    beat_interval: float
    trickle_events: int
    trickle_gap: float
    memory_events: int
    sample_every: int
    fsync_batches: int
    fsync_rows: int
    lookup_rows: int
    chain_backlog: int
    chain_batch_size: int
    chain_rounds: int
    verify_events: int


FULL = Sizes(
    publish_rounds=2_000,
    publish_warmup=100,
    backlog=100_000,
    batch_sizes=(100, 1_000, 5_000, 10_000),
    repeats={100: 1, 1_000: 5, 5_000: 5, 10_000: 3},
    rate=500,
    seconds=10,
    beat_interval=1.0,
    trickle_events=100,
    trickle_gap=0.1,
    memory_events=1_000_000,
    sample_every=1,
    fsync_batches=40,
    fsync_rows=5_000,
    lookup_rows=5_000_000,
    chain_backlog=100_000,
    chain_batch_size=10_000,
    chain_rounds=3,
    verify_events=1_000_000,
)
QUICK = Sizes(
    publish_rounds=200,
    publish_warmup=20,
    backlog=10_000,
    batch_sizes=(100, 1_000, 5_000, 10_000),
    repeats={100: 1, 1_000: 1, 5_000: 1, 10_000: 1},
    rate=500,
    seconds=3,
    beat_interval=1.0,
    trickle_events=20,
    trickle_gap=0.1,
    memory_events=100_000,
    sample_every=1,
    fsync_batches=6,
    fsync_rows=5_000,
    lookup_rows=500_000,
    chain_backlog=10_000,
    chain_batch_size=1_000,
    chain_rounds=1,
    verify_events=100_000,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the full sizes (default)")
    mode.add_argument("--quick", action="store_true", help="small sizes, a minute or two")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--database", default="die_hard_bench", help="PostgreSQL database to (re)create"
    )
    parser.add_argument(
        "--batch-sizes",
        help="throughput: comma-separated batch sizes (default: those of the mode)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="throughput: interleaved rounds per batch size (default: those of the mode)",
    )
    parser.add_argument(
        "--backlog", type=int, help="throughput: events per drain (default: that of the mode)"
    )
    parser.add_argument(
        "--relays",
        default="1,2",
        help="throughput: comma-separated numbers of relays side by side (default 1,2)",
    )
    parser.add_argument(
        "--clickhouse-under",
        default="auto",
        help="where the embedded engine's data folder goes: a folder, 'run' (this run's "
        "folder, on disk) or 'auto' (default: /dev/shm when it is a tmpfs with room, else "
        "'run'); docs/performance.md says why",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep this run's folder under bench/results/ (logs) and the embedded engine's data",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.batch_sizes or args.rounds or args.backlog:
        batch_sizes = (
            tuple(int(b) for b in args.batch_sizes.split(","))
            if args.batch_sizes
            else sizes.batch_sizes
        )
        sizes = replace(
            sizes,
            batch_sizes=batch_sizes,
            repeats={b: args.rounds or sizes.repeats.get(b, 1) for b in batch_sizes},
            backlog=args.backlog or sizes.backlog,
        )
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    # A folder of this run's own (logs, Beat schedule, the embedded ClickHouse data),
    # so that two runs at once never share an engine.
    workdir = harness.RESULTS / f"work-{stamp}-{os.getpid()}"
    under = (
        harness.default_clickhouse_under()
        if args.clickhouse_under == "auto"
        else None
        if args.clickhouse_under == "run"
        else Path(args.clickhouse_under)
    )
    if under is not None and not (under.is_dir() and os.access(under, os.W_OK)):
        parser.error(f"--clickhouse-under: {under} is not a folder this user can write to")
    # Outside the run's folder, a private folder of its own (removed at the end).
    outside = Path(tempfile.mkdtemp(prefix="die-hard-bench-", dir=under)) if under else None
    clickhouse_dir = (outside or workdir) / "clickhouse"
    workdir.mkdir(parents=True)

    def say(text: str) -> None:
        print(text, flush=True)

    bench = harness.prepare_environment(database=args.database, clickhouse_dir=clickhouse_dir)
    say(f"preparing PostgreSQL database {args.database!r} and a fresh ClickHouse")
    harness.setup_django(bench)
    harness.redirect_logs(workdir / "bench.log")
    from django.conf import settings  # noqa: PLC0415

    table = settings.EVENT_LOG["CLICKHOUSE_TABLE"]
    probe = harness.ClickHouseProbe(bench.clickhouse_url, table)
    machine = harness.machine_info()
    machine["postgresql"] = harness.postgres_version()
    machine["clickhouse"] = probe.version()
    machine["redis"] = harness.redis_version(bench.redis_url)
    machine["postgresql_settings"] = harness.postgres_settings()
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(),
        "mode": "quick" if args.quick else "full",
        "sizes": asdict(sizes),
        "machine": machine,
        "source": harness.source_revision(),
        "settings": {
            "default_batch_size": settings.EVENT_LOG["BATCH_SIZE"],
            "clickhouse": (
                f"embedded (chdb), data on {harness.filesystem_of(clickhouse_dir)}"
                if bench.clickhouse_dir
                else "server"
            ),
            "debug": settings.DEBUG,
            "log_level": "INFO, JSON lines to files",
        },
    }
    clock = time.perf_counter()
    try:
        if "publish" in only:
            say(f"1. publish overhead: {sizes.publish_rounds:,} rounds of each variant")
            results["publish"] = _timed(
                lambda: publish_overhead.run(
                    bench, probe, rounds=sizes.publish_rounds, warmup=sizes.publish_warmup
                )
            )
        if "throughput" in only or "memory" in only or "chain" in only:
            say(f"   backlog template: {sizes.backlog:,} events published through publish()")
            harness.make_backlog_template(sizes.backlog)
        if "throughput" in only:
            say(f"2. relay throughput: backlog of {sizes.backlog:,} events per run")
            results["throughput"] = _timed(
                lambda: throughput.run(
                    bench,
                    probe,
                    backlog=sizes.backlog,
                    batch_sizes=sizes.batch_sizes,
                    repeats=sizes.repeats,
                    worker_counts=tuple(int(n) for n in args.relays.split(",")),
                    progress=say,
                )
            )
        if "latency" in only:
            say("3./4. latency and insert economy through a Celery worker")
            results["latency"] = _timed(
                lambda: latency.run(
                    bench,
                    probe,
                    workdir,
                    rate=sizes.rate,
                    seconds=sizes.seconds,
                    beat_interval=sizes.beat_interval,
                    trickle_events=sizes.trickle_events,
                    trickle_gap=sizes.trickle_gap,
                    progress=say,
                )
            )
        if "memory" in only:
            say(f"5. memory: one relay process draining {sizes.memory_events:,} events")
            results["memory"] = _timed(
                lambda: memory.run(
                    bench,
                    probe,
                    workdir,
                    events=sizes.memory_events,
                    sample_every=sizes.sample_every,
                    progress=say,
                )
            )
        if "fsync" in only:
            say(
                f"6. fsync on insert: {sizes.fsync_batches} INSERTs of {sizes.fsync_rows:,} rows "
                "into a table with it and one without"
            )
            results["fsync"] = _timed(
                lambda: fsync_cost.run(probe, batches=sizes.fsync_batches, rows=sizes.fsync_rows)
            )
        if "load" in only:
            config = loadtest.Config.from_env()
            say(
                f"7. load held: gunicorn, Celery worker and Beat as deployed; "
                f"{config.step_seconds:g} s ramp steps"
            )
            results["load"] = _timed(
                lambda: loadtest.run(bench, probe, workdir, config=config, progress=say)
            )
        if "lookup" in only:
            say(
                f"8. envelope lookups: {sizes.lookup_rows:,} events, with and without the "
                "skip indexes"
            )
            results["lookup"] = _timed(lambda: _lookup(probe, rows=sizes.lookup_rows))
        if "chain" in only:
            say(
                f"9. batch chain: backlog of {sizes.chain_backlog:,} events with and without "
                f"it; verification of {sizes.verify_events:,} events"
            )
            results["chain"] = _timed(
                lambda: chain_cost.run(
                    bench,
                    probe,
                    backlog=sizes.chain_backlog,
                    batch_size=sizes.chain_batch_size,
                    rounds=sizes.chain_rounds,
                    verify_events=sizes.verify_events,
                    progress=say,
                )
            )
    finally:
        from django.db import connections  # noqa: PLC0415

        connections.close_all()
        if bench.clickhouse_dir is not None and not args.keep_data:
            shutil.rmtree(bench.clickhouse_dir, ignore_errors=True)
            if outside is not None:
                shutil.rmtree(outside, ignore_errors=True)
    if not args.keep_data:
        shutil.rmtree(workdir, ignore_errors=True)  # kept, with its logs, when a section failed

    results["duration_s"] = time.perf_counter() - clock
    results["targets"] = report.targets(results)
    table_text = report.render(results)
    print()
    print(table_text)

    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    document = json.dumps(results, indent=2, default=str)
    for name in (f"bench-{stamp}", "latest"):
        (harness.RESULTS / f"{name}.json").write_text(document + "\n")
        (harness.RESULTS / f"{name}.txt").write_text(table_text + "\n")
    print(f"\nwritten: bench/results/bench-{stamp}.json and bench/results/latest.json")
    failed = [t for t in results["targets"] if t["status"] == "FAIL"]
    return 1 if failed else 0


def _lookup(probe: harness.ClickHouseProbe, *, rows: int) -> dict[str, Any]:
    with probe.opened():
        return envelope_lookup.run(probe._client, rows=rows)


def _timed(action: Any) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = harness.loadavg()
    result = action()
    result["section_seconds"] = time.perf_counter() - started
    result["loadavg_before"] = load_before
    result["loadavg_after"] = harness.loadavg()
    return result


if __name__ == "__main__":
    sys.exit(main())
