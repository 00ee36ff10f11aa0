"""2. Relay throughput: events/s draining a backlog into ClickHouse.

For each batch size, a backlog of ``UserCreated`` events (copies of events
published through ``publish()``, each with a fresh event id) is drained by, in turn:

- the hand-written relay, the tightest one without guarantees: per batch, one
  ``COPY (DELETE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED))
  RETURNING <the relay's COPY columns>) TO STDOUT`` and one
  TabSeparated INSERT of those bytes (the driver's ``raw_insert``, ``async_insert=0``);
  the DELETE commits with its COPY (autocommit, one round trip) — no batch ids, no
  lease, no deduplication token, no retries, no Python object per row;
- the real relay, ``event_log.relay.Relay(config=...).run()``;

each with 1 and with 2 workers (threads of this process; each opens its own
PostgreSQL connection and ClickHouse client before the clock starts and closes
them at the end). After every run of the real relay, the set of published
event ids is compared with the set in ClickHouse, and the counts too.

Each combination runs several rounds, interleaved with the others (which of the
two goes first alternates from round to round) so that a slow moment of the
machine does not fall on one of them only; the median counts. Inserts are
counted per run: relay batches (``RelayReport.batches``) for the relay, loop
iterations for the hand-written relay — each is one ClickHouse INSERT.

Where a batch's time goes: the relay's steps report their durations to
``event_log.relay.tracing.step_observers`` (the same steps are Sentry spans), and
the hand-written relay times its COPY, INSERT and COMMIT; both per batch, per run.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from statistics import median
from typing import Any, Protocol

from harness import (
    BenchEnv,
    ClickHouseProbe,
    cpu_seconds,
    exactly_once,
    fill_backlog,
    outbox_depth,
    settle_postgres,
)

# "WHERE id IN (SELECT ...)" is planned as a hash semi-join over a sequential scan of
# the whole outbox (44.7 ms for 5,000 of 100,000 rows, EXPLAIN ANALYZE), so its cost
# grew with the backlog; "= ANY(ARRAY(...))" walks the primary key, as the relay's seal.
HAND_WRITTEN_COPY = """
COPY (
    DELETE FROM event_log_outbox WHERE id = ANY(ARRAY(
        SELECT id FROM event_log_outbox ORDER BY id LIMIT {limit} FOR UPDATE SKIP LOCKED
    ))
    RETURNING {columns}
) TO STDOUT
"""

# How long a closed PostgreSQL backend may take to be counted in the postmaster's
# children's CPU time (seen: up to a few milliseconds; nothing else runs meanwhile).
CPU_SETTLE_SECONDS = 0.3

# The relay's steps (event_log.relay.tracing.step names), innermost first: each one's
# own time is its duration minus the steps nested in it.
RELAY_STEPS = {
    "seal batch": ("copy rows",),  # the claim: its transaction, the seal, the copy
    "copy rows": (),
    "insert batch": ("renew lease",),
    "renew lease": (),
    "digest rows": (),  # the chain's row digests, in the relay's thread after the insert
    "delete batch": (),
}
STEP_LABELS = {
    "seal batch": "seal",
    "copy rows": "copy",
    "renew lease": "lease renewal",
    "digest rows": "row digests",
    "insert batch": "insert",
    "delete batch": "finish",
}


class Drainer(Protocol):
    def prepare(self) -> None: ...
    def drain(self) -> tuple[int, int]: ...  # (inserts, events)
    def close(self) -> None: ...


class StepClock:
    """Seconds spent in each named step, summed per thread (observers run in any thread)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[int, str], float] = defaultdict(float)

    def __call__(self, step: str, seconds: float) -> None:
        self._totals[(threading.get_ident(), step)] += seconds

    def totals(self) -> dict[str, float]:
        summed: dict[str, float] = defaultdict(float)
        for (_, step), seconds in self._totals.items():
            summed[step] += seconds
        return dict(summed)


class HandWrittenRelay:
    """The tightest relay without guarantees: one COPY of a DELETE and one INSERT per batch."""

    def __init__(self, bench: BenchEnv, table: str, batch_size: int, clock: StepClock) -> None:
        self.bench = bench
        self.table = table
        self.batch_size = batch_size
        self.clock = clock
        self.pg: Any = None
        self.ch: Any = None

    def prepare(self) -> None:
        import psycopg  # noqa: PLC0415

        from event_log import clickhouse  # noqa: PLC0415

        self.pg = psycopg.connect(self.bench.database_url, autocommit=True)
        self.ch = clickhouse.connect(self.bench.clickhouse_url)

    def drain(self) -> tuple[int, int]:
        from event_log import sql  # noqa: PLC0415

        columns = list(sql.CLICKHOUSE_COLUMNS)
        statement = HAND_WRITTEN_COPY.format(limit=self.batch_size, columns=sql.COPY_COLUMNS)
        settings = {"async_insert": 0}
        inserts = events = 0
        clock = self.clock
        while True:
            started = time.perf_counter()
            # Autocommit: the DELETE commits with its COPY, one round trip, before the
            # INSERT (a crash in between loses the batch: no guarantees).
            with self.pg.cursor() as cur, cur.copy(statement) as copy:
                block = b"".join(copy)
            copied = time.perf_counter()
            clock("copy + delete", copied - started)
            if not block:
                return inserts, events
            self.ch.raw_insert(
                self.table, columns, insert_block=block, fmt="TabSeparated", settings=settings
            )
            clock("insert", time.perf_counter() - copied)
            inserts += 1
            events += block.count(b"\n")

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


@contextlib.contextmanager
def observing_steps(clock: StepClock) -> Any:
    """Let the relay's steps report to ``clock`` while the block runs."""
    from event_log.relay import tracing  # noqa: PLC0415

    tracing.step_observers.append(clock)
    try:
        yield
    finally:
        tracing.step_observers.remove(clock)


def step_breakdown(kind: str, totals: dict[str, float], *, batches: int, busy: float) -> dict:
    """Milliseconds per batch in each step (own time, nested steps taken out), and the rest.

    ``busy`` is the drainers' time together (wall time times workers): the rest is what no
    step covers (the loop, logging), or nothing when steps overlap (the relay's second
    connection seals and finishes while it inserts: its steps add up to more than ``busy``).
    """
    if not batches:
        return {}
    if kind == "relay":
        own = {
            STEP_LABELS[name]: totals.get(name, 0.0)
            - sum(totals.get(inner, 0.0) for inner in nested)
            for name, nested in RELAY_STEPS.items()
        }
    else:
        own = dict(totals)
    own["other"] = max(0.0, busy - sum(own.values()))
    return {name: seconds / batches * 1000 for name, seconds in own.items()}


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


KINDS = ("hand_written", "relay")


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
                # Alternate which goes first, so neither always follows the other's run.
                for kind in KINDS if round_ % 2 == 0 else KINDS[::-1]:
                    result = _one_run(
                        bench, probe, kind, batch=batch, workers=workers, backlog=backlog
                    )
                    result["round"] = round_ + 1
                    runs.append(result)
                    steps = "  ".join(f"{k} {v:.1f}" for k, v in result["steps_ms"].items())
                    progress(
                        f"  {kind:12} batch {batch:>6,} x{workers} (round {round_ + 1}):"
                        f" {result['events_per_s']:>9,.0f} ev/s  {result['inserts']:>5} inserts"
                        f"  {'OK' if result['exactly_once'] else 'FAIL'} ({result['check']})"
                        f"\n      ms per batch: {steps}"
                    )
    probe.truncate()
    comparisons = [
        _compare(runs, batch, workers) for batch in batch_sizes for workers in worker_counts
    ]
    return {"backlog": backlog, "runs": runs, "comparisons": comparisons}


def _compare(runs: list[dict[str, Any]], batch: int, workers: int) -> dict[str, Any]:
    """Medians and ranges of the rounds of one (batch size, workers), both relays."""
    mine = {
        kind: [
            r for r in runs if (r["kind"], r["batch_size"], r["workers"]) == (kind, batch, workers)
        ]
        for kind in KINDS
    }
    rates = {kind: [r["events_per_s"] for r in mine[kind]] for kind in KINDS}
    relay = median(rates["relay"])
    hand_written = median(rates["hand_written"])
    steps: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        names = dict.fromkeys(name for r in mine[kind] for name in r["steps_ms"])
        per_batch = {
            name: median(r["steps_ms"].get(name, 0.0) for r in mine[kind]) for name in names
        }
        total = sum(per_batch.values())
        steps[kind] = {
            name: {"ms": ms, "share": ms / total if total else 0.0}
            for name, ms in per_batch.items()
        }
    walls = {kind: median(r.get("wall_ms_per_batch", 0.0) for r in mine[kind]) for kind in KINDS}
    cpu = {
        kind: {
            name: median(r["cpu_ms_per_batch"][name] for r in mine[kind])
            for name in mine[kind][0].get("cpu_ms_per_batch", {})
        }
        for kind in KINDS
    }
    cores = {kind: median(r.get("cpu_cores", 0.0) for r in mine[kind]) for kind in KINDS}
    return {
        "batch_size": batch,
        "workers": workers,
        "rounds": len(rates["relay"]),
        "wall_ms_per_batch": walls,
        "cpu_ms_per_batch": cpu,
        "cpu_cores": cores,
        "relay_events_per_s": relay,
        "relay_range": [min(rates["relay"]), max(rates["relay"])],
        "hand_written_events_per_s": hand_written,
        "hand_written_range": [min(rates["hand_written"]), max(rates["hand_written"])],
        "ratio": relay / hand_written,
        "ratios_by_round": [
            r["events_per_s"] / h["events_per_s"]
            for r, h in zip(mine["relay"], mine["hand_written"], strict=False)
        ],
        "steps_ms_per_batch": steps,
        "exactly_once": all(r["exactly_once"] for r in mine["relay"]),
    }


def _one_run(
    bench: BenchEnv, probe: ClickHouseProbe, kind: str, *, batch: int, workers: int, backlog: int
) -> dict[str, Any]:
    probe.truncate()
    if outbox_depth():
        raise RuntimeError("the outbox is not empty before a throughput run")
    published = fill_backlog(backlog)
    settle_postgres()
    clock = StepClock()
    make: Callable[[], Drainer] = (
        partial(RealRelay, batch)
        if kind == "relay"
        else partial(HandWrittenRelay, bench, probe.table, batch, clock)
    )
    cpu_before = cpu_seconds()
    with observing_steps(clock) if kind == "relay" else contextlib.nullcontext():
        seconds, inserts, events = _drain_with(make, workers)
    # A backend that has just exited is in neither /proc nor its parent's times for a
    # moment: the drainers closed theirs (harness.cpu_seconds).
    time.sleep(CPU_SETTLE_SECONDS)
    cpu = {name: used - cpu_before[name] for name, used in cpu_seconds().items()}
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
        "steps_ms": step_breakdown(kind, clock.totals(), batches=inserts, busy=seconds * workers),
        # Wall time per batch and drainer: less than the relay's steps summed, as its
        # second connection seals and finishes while the relay inserts (relay.overlap).
        "wall_ms_per_batch": seconds * workers / inserts * 1000 if inserts else 0.0,
        # CPU time per batch: this process (drainers and embedded engine) and PostgreSQL.
        # On a machine whose cores are all busy, this decides the rate, not the waits.
        "cpu_ms_per_batch": {
            name: used / inserts * 1000 if inserts else 0.0 for name, used in cpu.items()
        },
        "cpu_cores": sum(cpu.values()) / seconds if seconds else 0.0,
        "exactly_once": ok and left == 0 and events == len(published),
        "check": detail,
    }
