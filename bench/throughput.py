"""2. Relay throughput: events/s draining a backlog into ClickHouse.

For each batch size, a backlog of ``UserCreated`` events (copies of events
published through ``publish()``, each with a fresh event id) is drained by, in turn:

- the hand-written baseline: one ``DELETE ... RETURNING`` and one
  clickhouse-connect ``client.insert(rows)`` per batch, in one PostgreSQL
  transaction — no batch ids, no lease, no deduplication token, no retries;
- the real relay, ``event_log.relay.Relay(config=...).run()``;

each with 1 and with 2 workers (threads of this process; each opens its own
PostgreSQL connection and ClickHouse client before the clock starts and closes
them at the end). After every run of the real relay, the set of published
event ids is compared with the set in ClickHouse, and the counts too.

Each combination runs several rounds, interleaved with the others so that a
slow moment of the machine does not fall on one of them only; the median
counts. Inserts are counted per run: relay batches (``RelayReport.batches``) for the
relay, loop iterations for the baseline — each is one ClickHouse INSERT.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from functools import partial
from statistics import median
from typing import Any, Protocol

from harness import (
    BenchEnv,
    ClickHouseProbe,
    exactly_once,
    fill_backlog,
    outbox_depth,
    settle_postgres,
)

BASELINE_DELETE = """
DELETE FROM event_log_outbox WHERE id IN (
    SELECT id FROM event_log_outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
)
RETURNING event_id, event_type, event_date_time, environment, event_context, metadata_version,
          actor_type, actor_id, subject_type, subject_id, request_id, traceparent
"""
BASELINE_COLUMNS = [
    "event_id",
    "event_type",
    "event_date_time",
    "environment",
    "event_context",
    "metadata_version",
    "actor_type",
    "actor_id",
    "subject_type",
    "subject_id",
    "request_id",
    "traceparent",
]


class Drainer(Protocol):
    def prepare(self) -> None: ...
    def drain(self) -> tuple[int, int]: ...  # (inserts, events)
    def close(self) -> None: ...


class BaselineRelay:
    """The minimal relay a hurried engineer would write. At-least-once at best."""

    def __init__(self, bench: BenchEnv, table: str, batch_size: int) -> None:
        self.bench = bench
        self.table = table
        self.batch_size = batch_size
        self.pg: Any = None
        self.ch: Any = None

    def prepare(self) -> None:
        import psycopg  # noqa: PLC0415

        from event_log import clickhouse  # noqa: PLC0415

        self.pg = psycopg.connect(self.bench.database_url)
        self.ch = clickhouse.connect(self.bench.clickhouse_url)

    def drain(self) -> tuple[int, int]:
        inserts = events = 0
        while True:
            with self.pg.transaction(), self.pg.cursor() as cur:
                cur.execute(BASELINE_DELETE, [self.batch_size])
                rows = cur.fetchall()
                if not rows:
                    return inserts, events
                self.ch.insert(
                    self.table, rows, column_names=BASELINE_COLUMNS, settings={"async_insert": 0}
                )
            inserts += 1
            events += len(rows)

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()
        if self.ch is not None:
            self.ch.close()


class RealRelay:
    """``event_log.relay.Relay`` with the batch size under test and a budget that never ends."""

    def __init__(self, batch_size: int) -> None:
        from event_log.conf import EventLogSettings, event_log_settings  # noqa: PLC0415
        from event_log.relay import Relay  # noqa: PLC0415

        overrides: dict[str, Any] = {"BATCH_SIZE": batch_size, "TIME_BUDGET": 300}
        if "MIN_INSERT_INTERVAL" in EventLogSettings.__dataclass_fields__:
            # A backlog drain sends full batches, which never wait; this only keeps the
            # last, partial batch of a run from adding a pause to the measured time.
            overrides["MIN_INSERT_INTERVAL"] = 0.0
        self.relay = Relay(config=event_log_settings(**overrides))

    def prepare(self) -> None:
        from django.db import connection  # noqa: PLC0415

        self.relay.connect_clickhouse()
        connection.ensure_connection()

    def drain(self) -> tuple[int, int]:
        report = self.relay.run()
        if report.failures or not report.drained:
            raise RuntimeError(f"relay did not drain cleanly: {report}")
        return report.batches, report.delivered

    def close(self) -> None:
        self.relay.close()


def _drain_with(make: Callable[[], Drainer], workers: int) -> tuple[float, int, int]:
    """Run ``workers`` drainers side by side; returns (seconds, inserts, events)."""
    from django.db import connection  # noqa: PLC0415

    barrier = threading.Barrier(workers + 1)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        drainer: Drainer | None = None
        try:
            drainer = make()
            drainer.prepare()
            barrier.wait()
            results.append(drainer.drain())
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            if drainer is not None:
                drainer.close()
            connection.close()

    threads = [threading.Thread(target=work, name=f"drainer-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed, sum(r[0] for r in results), sum(r[1] for r in results)


def run(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    *,
    backlog: int,
    batch_sizes: tuple[int, ...],
    repeats: dict[int, int],
    worker_counts: tuple[int, ...] = (1, 2),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every (batch size, workers, kind) drains ``repeats[batch size]`` times, interleaved."""
    runs: list[dict[str, Any]] = []
    rounds = max(repeats.get(batch, 1) for batch in batch_sizes)
    for round_ in range(rounds):
        for batch in batch_sizes:
            if round_ >= repeats.get(batch, 1):
                continue
            for workers in worker_counts:
                for kind in ("baseline", "relay"):
                    result = _one_run(
                        bench, probe, kind, batch=batch, workers=workers, backlog=backlog
                    )
                    result["round"] = round_ + 1
                    runs.append(result)
                    progress(
                        f"  {kind:8} batch {batch:>6,} x{workers} (round {round_ + 1}):"
                        f" {result['events_per_s']:>9,.0f} ev/s  {result['inserts']:>5} inserts"
                        f"  {'OK' if result['exactly_once'] else 'FAIL'} ({result['check']})"
                    )
    probe.truncate()
    comparisons = []
    for batch in batch_sizes:
        for workers in worker_counts:
            rates = {
                kind: [
                    r["events_per_s"]
                    for r in runs
                    if (r["kind"], r["batch_size"], r["workers"]) == (kind, batch, workers)
                ]
                for kind in ("baseline", "relay")
            }
            relay = median(rates["relay"])
            baseline = median(rates["baseline"])
            comparisons.append(
                {
                    "batch_size": batch,
                    "workers": workers,
                    "rounds": len(rates["relay"]),
                    "relay_events_per_s": relay,
                    "relay_range": [min(rates["relay"]), max(rates["relay"])],
                    "baseline_events_per_s": baseline,
                    "baseline_range": [min(rates["baseline"]), max(rates["baseline"])],
                    "ratio": relay / baseline,
                    "exactly_once": all(
                        r["exactly_once"]
                        for r in runs
                        if (r["kind"], r["batch_size"], r["workers"]) == ("relay", batch, workers)
                    ),
                }
            )
    return {"backlog": backlog, "runs": runs, "comparisons": comparisons}


def _one_run(
    bench: BenchEnv, probe: ClickHouseProbe, kind: str, *, batch: int, workers: int, backlog: int
) -> dict[str, Any]:
    probe.truncate()
    if outbox_depth():
        raise RuntimeError("the outbox is not empty before a throughput run")
    published = fill_backlog(backlog)
    settle_postgres()
    make: Callable[[], Drainer] = (
        partial(RealRelay, batch)
        if kind == "relay"
        else partial(BaselineRelay, bench, probe.table, batch)
    )
    seconds, inserts, events = _drain_with(make, workers)
    left = outbox_depth()
    if kind == "relay":
        ok, detail = exactly_once(probe, published)
    else:
        count, unique = probe.count_and_unique()
        ok = count == unique == len(published)
        detail = f"{count:,} rows ({unique:,} distinct) for {len(published):,}"
    return {
        "kind": kind,
        "batch_size": batch,
        "workers": workers,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "inserts": inserts,
        "inserts_per_10k": inserts / events * 10_000 if events else 0.0,
        "exactly_once": ok and left == 0 and events == len(published),
        "check": detail,
    }
