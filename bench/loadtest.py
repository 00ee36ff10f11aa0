"""7. Load held: the service as deployed under HTTP load, and a ClickHouse outage.

``make loadtest`` (``python bench/run.py --only load``). The processes are the
deployed ones, on 127.0.0.1 only, on the bench's own databases (``harness``):

- gunicorn with ``docker/gunicorn.conf.py`` and production settings (DEBUG off,
  a SECRET_KEY, ALLOWED_HOSTS=127.0.0.1, behind a TLS proxy as deployed: the
  generator sends ``X-Forwarded-Proto: https``), the on-commit kick on;
- a Celery worker (``--pool=solo``: it owns the embedded ClickHouse engine) and Beat.

The load generator is in this file (docs/adr/0013-in-repo-open-loop-load-generator.md):
an open-loop schedule (request *i* is due at ``start + i / rate`` whatever the
previous answers did), sent by a pool of keep-alive connections. A request's
latency runs from the moment it was due, so a stalled server shows up in the
latency instead of silently lowering the offered rate (no coordinated omission).

Commit to ClickHouse: a statement-level trigger on the outbox (bench database
only) records ``(event_id, event_date_time, clock_timestamp())`` for the rows
the relay's finishing DELETE removes; the relay runs that DELETE only after
ClickHouse acknowledged the batch's INSERT. The latency is that time minus
``event_date_time`` (publish time, just before COMMIT): an upper bound on
"visible in ClickHouse" by the few milliseconds between the INSERT's
acknowledgement and the DELETE.

Exactly once: after the run the worker is stopped and ClickHouse is read; the
user ids the API returned (201) are compared with the ``user_id`` of the
``user_created`` rows in ClickHouse, and the event ids the relay finished with
the event ids in ClickHouse — sets and lengths.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    SRC,
    BenchEnv,
    ClickHouseProbe,
    clear_redis,
    empty_outbox,
    percentile,
)

P99_MAX_MS = 100.0
# Namastack outbox's published figure: about 10,000 records/s with p99 0.35 s on 4 instances.
NAMASTACK_RECORDS_PER_S = 10_000.0
NAMASTACK_INSTANCES = 4
NAMASTACK_P99_S = 0.35

DELIVERED_DDL = """
CREATE TABLE IF NOT EXISTS bench_delivered (
    event_id uuid NOT NULL,
    event_date_time timestamptz NOT NULL,
    delivered_at timestamptz NOT NULL
);
CREATE OR REPLACE FUNCTION bench_record_delivered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_delivered SELECT event_id, event_date_time, clock_timestamp() FROM gone;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_record_delivered ON event_log_outbox;
CREATE TRIGGER bench_record_delivered AFTER DELETE ON event_log_outbox
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION bench_record_delivered();
"""
DELIVERED_DROP = """
DROP TRIGGER IF EXISTS bench_record_delivered ON event_log_outbox;
DROP FUNCTION IF EXISTS bench_record_delivered();
DROP TABLE IF EXISTS bench_delivered;
"""


@dataclass(frozen=True, slots=True)
class Config:
    """Sizes of a load test; every field can be set by an environment variable."""

    step_seconds: float = 20.0  # LOADTEST_STEP_SECONDS (the figure: 60)
    start_rate: float = 40.0  # LOADTEST_START_RATE, requests/s of the first ramp step
    growth: float = 1.5  # LOADTEST_GROWTH, each step's rate over the previous one
    max_steps: int = 8  # LOADTEST_MAX_STEPS
    hold_seconds: float = 20.0  # LOADTEST_HOLD_SECONDS, the 50 % and 90 % runs
    outage_seconds: float = 15.0  # LOADTEST_OUTAGE_SECONDS (the figure: 30)
    connections: int = 32  # LOADTEST_CONNECTIONS, keep-alive connections of the generator

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name, default in asdict(cls()).items():
            raw = environ.get(f"LOADTEST_{name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                value = type(default)(raw)
            except ValueError:
                raise ValueError(f"LOADTEST_{name.upper()}={raw!r} is not a number") from None
            if value <= 0:
                raise ValueError(f"LOADTEST_{name.upper()} must be positive, not {raw!r}")
            values[name] = value
        return cls(**values)


# -- the load generator ----------------------------------------------------------


@dataclass(slots=True)
class Sample:
    due: float  # time.time() the request was scheduled for
    latency_s: float  # from due to the last byte of the answer
    status: int
    user_id: int | None


@dataclass(slots=True)
class LoadRun:
    rate: float
    seconds: float
    started: float = 0.0
    samples: list[Sample] = field(default_factory=list)


def generate(port: int, rate: float, seconds: float, *, connections: int, tag: str) -> LoadRun:
    """Send ``rate * seconds`` ``POST /api/users`` on an open-loop schedule."""
    run = LoadRun(rate=rate, seconds=seconds)
    jobs: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
    lock = threading.Lock()

    def sender() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while (job := jobs.get()) is not None:
            n, due = job
            body = json.dumps({"email": f"load-{tag}-{n}@example.com", "first_name": "Ada"})
            status, user_id = 0, None
            try:
                conn.request(
                    "POST",
                    "/api/users",
                    body=body,
                    headers={"Content-Type": "application/json", "X-Forwarded-Proto": "https"},
                )
                answer = conn.getresponse()
                payload = answer.read()
                status = answer.status
                if status == 201:
                    user_id = int(json.loads(payload)["id"])
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            sample = Sample(due=due, latency_s=time.time() - due, status=status, user_id=user_id)
            with lock:
                run.samples.append(sample)
        conn.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    total = int(rate * seconds)
    run.started = start = time.time() + 0.05
    for n in range(total):
        due = start + n / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        jobs.put((n, due))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    return run


def request_stats(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 201]
    lat = [s.latency_s * 1000 for s in samples]
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "achieved_per_s": len(ok) / seconds if seconds else 0.0,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat, default=float("nan")),
    }


def growing(depths: Sequence[tuple[float, int]], rate: float) -> bool:
    """Whether the outbox grew over the last half of a window.

    Bounded means the least-squares line through the last half's depth samples
    rises by less than one second's worth of requests over that half.
    """
    half = depths[len(depths) // 2 :]
    if len(half) < 2:
        return False
    xs = [t for t, _ in half]
    ys = [float(d) for _, d in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return False
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return slope * (xs[-1] - xs[0]) >= max(rate, 1.0)


def sustained(stats: dict[str, Any], depths: Sequence[tuple[float, int]], rate: float) -> bool:
    return stats["errors"] == 0 and stats["p99_ms"] < P99_MAX_MS and not growing(depths, rate)


# -- the processes ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (
        log.open("ab") as out,
        subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT) as proc,
    ):
        try:
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "--workdir", str(SRC), "-A", "core", *args]


def _wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


# -- measurements ----------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])  # utime + stime


def _children(pid: int) -> list[int]:
    found = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Sampler:
    """Once a second: outbox depth and cumulative CPU ticks of each process group."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups
        self.depths: list[tuple[float, int]] = []
        self.ticks: list[tuple[float, dict[str, dict[int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        from django.db import connection  # noqa: PLC0415

        connection.close()

    def _loop(self) -> None:
        from harness import outbox_depth  # noqa: PLC0415

        while not self._stop.is_set():
            now = time.time()
            self.depths.append((now, outbox_depth()))
            snapshot = {
                name: {pid: _cpu_ticks(pid) for pid in pids} for name, pids in self.groups().items()
            }
            self.ticks.append((now, snapshot))
            self._stop.wait(1.0)

    def depths_between(self, lo: float, hi: float) -> list[tuple[float, int]]:
        return [(t, d) for t, d in self.depths if lo <= t <= hi]

    def cpu_between(self, lo: float, hi: float) -> dict[str, float]:
        """CPU used per group in [lo, hi], in cores (1.0 = one core busy)."""
        inside = [(t, s) for t, s in self.ticks if lo <= t <= hi]
        if len(inside) < 2:
            return {}
        (t0, first), (t1, last) = inside[0], inside[-1]
        used: dict[str, float] = {}
        for name, pids in last.items():
            ticks = 0
            for pid, value in pids.items():
                if value < 0:
                    continue
                before = first.get(name, {}).get(pid, 0)
                ticks += value - max(before, 0)
            used[name] = ticks / TICKS / (t1 - t0)
        return used


def _postgres_pids() -> list[int]:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return [int(r[0]) for r in cur.fetchall()]


def delivery_latency(lo: float, hi: float) -> dict[str, Any]:
    """Publish → finished delivery of the events published in [lo, hi] (epoch seconds)."""
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM delivered_at - event_date_time) FROM bench_delivered"
            " WHERE event_date_time >= to_timestamp(%s) AND event_date_time < to_timestamp(%s)",
            [lo, hi],
        )
        values = [float(r[0]) * 1000 for r in cur.fetchall()]
    return {
        "events": len(values),
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
    }


def _sql(statements: str) -> None:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute(statements)


def _outbox_empty() -> bool:
    from harness import outbox_depth  # noqa: PLC0415

    return outbox_depth() == 0


# -- the run ---------------------------------------------------------------------


def run(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    workdir: Path,
    *,
    config: Config,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    port = _free_port()
    env = bench.child_env(
        DEBUG="false",
        SECRET_KEY="loadtest-only-secret-key-" + "x" * 40,
        ALLOWED_HOSTS="127.0.0.1",
        BEHIND_TLS_PROXY="true",
        EVENT_LOG_KICK="true",
        API_USERS_CREATE_RATE="1000000/s",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(REPO / "docker" / "gunicorn.conf.py"),
        "core.wsgi:application",
        "--chdir",
        str(SRC),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    worker_argv = _celery("worker", "--pool=solo", "--loglevel=INFO")
    beat_argv = _celery(
        "beat", "--loglevel=INFO", "--schedule", str(workdir / "loadtest-beat-schedule")
    )
    clear_redis(bench)
    # Earlier sections of `make bench` leave events behind; this section's check
    # compares whole sets, so it starts from an empty outbox and an empty table.
    empty_outbox()
    probe.truncate()
    _sql(DELIVERED_DDL)
    all_user_ids: list[int] = []
    results: dict[str, Any] = {"config": asdict(config), "p99_max_ms": P99_MAX_MS}
    worker: dict[str, subprocess.Popen[bytes]] = {}

    def groups() -> dict[str, list[int]]:
        found = {"web": _children(web.pid), "postgres": _postgres_pids(), "load": [os.getpid()]}
        proc = worker.get("proc")
        found["worker"] = _children(proc.pid) if proc and proc.poll() is None else []
        found["beat"] = [beat.pid]
        return found

    def start_worker() -> None:
        worker["proc"] = subprocess.Popen(
            worker_argv,
            env=env,
            stdout=(workdir / "loadtest-worker.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    tag = 0

    def measure(rate: float, seconds: float, sampler: Sampler) -> tuple[LoadRun, dict[str, Any]]:
        nonlocal tag
        tag += 1
        load = generate(port, rate, seconds, connections=config.connections, tag=str(tag))
        end = load.started + seconds
        all_user_ids.extend(s.user_id for s in load.samples if s.user_id is not None)
        stats = request_stats(load.samples, seconds)
        depths = sampler.depths_between(load.started, end)
        stats.update(
            rate=rate,
            seconds=seconds,
            outbox_depth_max=max((d for _, d in depths), default=0),
            outbox_growing=growing(depths, rate),
            cpu_cores=sampler.cpu_between(load.started, end),
        )
        stats["sustained"] = sustained(stats, depths, rate)
        return load, stats

    def settle() -> float:
        return _wait_until(_outbox_empty, timeout=300, what="outbox drained")

    with (
        _process(gunicorn, env, workdir / "loadtest-web.log") as web,
        _process(beat_argv, env, workdir / "loadtest-beat.log") as beat,
    ):
        start_worker()
        try:
            _wait_until(lambda: _port_open(port), timeout=60, what="gunicorn listening")
            with Sampler(groups) as sampler:
                progress("   warm-up: 20 requests, then the outbox drained by the worker")
                measure(10, 2, sampler)
                settle()

                ramp = []
                rate = config.start_rate
                best = 0.0
                for _ in range(config.max_steps):
                    _, stats = measure(rate, config.step_seconds, sampler)
                    ramp.append(stats)
                    progress(
                        f"   ramp {rate:,.0f} req/s: p99 {stats['p99_ms']:.0f} ms, "
                        f"{stats['errors']} errors, outbox max {stats['outbox_depth_max']:,}"
                        f"{' (growing)' if stats['outbox_growing'] else ''}"
                        f" -> {'held' if stats['sustained'] else 'not held'}"
                    )
                    settle()
                    if not stats["sustained"]:
                        break
                    best = rate
                    rate *= config.growth
                if ramp and not ramp[-1]["sustained"] and best > 0:
                    # One step between the last rate held and the first not held.
                    _, stats = measure((best * rate) ** 0.5, config.step_seconds, sampler)
                    ramp.append(stats)
                    progress(
                        f"   ramp {stats['rate']:,.0f} req/s: p99 {stats['p99_ms']:.0f} ms"
                        f" -> {'held' if stats['sustained'] else 'not held'}"
                    )
                    settle()
                    if stats["sustained"]:
                        best = stats["rate"]
                results["ramp"] = ramp
                results["sustained_rate"] = best
                if best == 0:
                    best = config.start_rate / 2
                    progress("   not even the first step held; the holds use half of it")

                holds = {}
                for share in (0.5, 0.9):
                    load, stats = measure(best * share, config.hold_seconds, sampler)
                    settle()
                    stats["commit_to_clickhouse"] = delivery_latency(
                        load.started, load.started + config.hold_seconds
                    )
                    holds[f"{int(share * 100)}"] = stats
                    progress(
                        f"   hold {share:.0%} ({best * share:,.0f} req/s): request p99 "
                        f"{stats['p99_ms']:.0f} ms, to ClickHouse p99 "
                        f"{stats['commit_to_clickhouse']['p99_ms']:.0f} ms"
                    )
                results["holds"] = holds

                results["outage"] = _outage(
                    best * 0.5,
                    config=config,
                    port=port,
                    sampler=sampler,
                    worker=worker,
                    start_worker=start_worker,
                    all_user_ids=all_user_ids,
                    progress=progress,
                )
        finally:
            proc = worker.get("proc")
            if proc is not None:
                _stop(proc)
    # The worker is stopped: this process may open the embedded engine.
    results["exactly_once"] = _exactly_once(probe, all_user_ids)
    _sql(DELIVERED_DROP)
    progress(f"   exactly once: {results['exactly_once']['detail']}")
    results["comparison"] = compare(results)
    return results


def _outage(
    rate: float,
    *,
    config: Config,
    port: int,
    sampler: Sampler,
    worker: dict[str, subprocess.Popen[bytes]],
    start_worker: Callable[[], None],
    all_user_ids: list[int],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Load at ``rate`` with the engine's owner (the worker) stopped in the middle."""
    before = after = config.outage_seconds
    seconds = before + config.outage_seconds + after
    marks: dict[str, float] = {}

    def fault() -> None:
        time.sleep(before)
        marks["down"] = time.time()
        _stop(worker["proc"])
        time.sleep(max(0.0, marks["down"] + config.outage_seconds - time.time()))
        marks["up"] = time.time()
        start_worker()

    progress(
        f"   outage at {rate:,.0f} req/s: worker stopped for {config.outage_seconds:g} s "
        f"in a {seconds:g} s run"
    )
    faulter = threading.Thread(target=fault, daemon=True)
    faulter.start()
    load = generate(port, rate, seconds, connections=config.connections, tag="outage")
    faulter.join()
    all_user_ids.extend(s.user_id for s in load.samples if s.user_id is not None)
    pre_depth = max((d for _, d in sampler.depths_between(load.started, marks["down"])), default=0)
    empty = _wait_until(_outbox_empty, timeout=300, what="outbox empty")
    time.sleep(1.1)  # one more depth sample after the outbox emptied
    # Drained: the first depth sample after the restart back at the pre-outage level.
    drained = next(
        (t - marks["up"] for t, d in sampler.depths if t > marks["up"] and d <= pre_depth),
        float("nan"),
    )

    def window(lo: float, hi: float) -> dict[str, Any]:
        inside = [s for s in load.samples if lo <= s.due < hi]
        stats = request_stats(inside, hi - lo)
        stats["outbox_depth_max"] = max((d for _, d in sampler.depths_between(lo, hi)), default=0)
        return stats

    end = load.started + seconds
    result = {
        "rate": rate,
        "outage_seconds": marks["up"] - marks["down"],
        "before": window(load.started, marks["down"]),
        "during": window(marks["down"], marks["up"]),
        "after": window(marks["up"], end),
        "drain_seconds": drained,
        "empty_after_load_seconds": empty,
        "pre_outage_depth_max": pre_depth,
        "depths": [
            (round(t - load.started, 1), d)
            for t, d in sampler.depths_between(load.started, time.time())
        ],
        "backlog_at_restart": max(
            (d for _, d in sampler.depths_between(marks["up"] - 1.5, marks["up"] + 0.5)), default=0
        ),
    }
    progress(
        f"   outage: p99 before {result['before']['p99_ms']:.0f} ms, during "
        f"{result['during']['p99_ms']:.0f} ms; backlog {result['backlog_at_restart']:,} "
        f"drained in {drained:.1f} s"
    )
    return result


def _exactly_once(probe: ClickHouseProbe, user_ids: Sequence[int]) -> dict[str, Any]:
    from django.db import connection  # noqa: PLC0415

    rows = probe.query(
        f"SELECT event_id, JSONExtractInt(event_context, 'user_id') FROM {probe.table}"
        " WHERE event_type = 'user_created'"
    )
    with connection.cursor() as cur:
        cur.execute("SELECT event_id FROM bench_delivered")
        finished = [r[0] for r in cur.fetchall()]
    ch_users = [int(r[1]) for r in rows]
    ch_events = [r[0] for r in rows]
    users_ok = set(ch_users) == set(user_ids) and len(ch_users) == len(user_ids)
    events_ok = set(ch_events) == set(finished) and len(ch_events) == len(finished)
    missing = len(set(user_ids) - set(ch_users))
    extra = len(set(ch_users) - set(user_ids))
    detail = (
        f"{len(user_ids):,} users created (201), {len(ch_users):,} user_created rows in "
        f"ClickHouse; {missing:,} missing, {extra:,} unknown, "
        f"{len(ch_users) - len(set(ch_users)):,} duplicates; event ids "
        f"{'match' if events_ok else 'differ from'} the {len(finished):,} the relay finished"
    )
    return {
        "ok": users_ok and events_ok,
        "users_created": len(user_ids),
        "clickhouse_rows": len(ch_users),
        "detail": detail,
    }


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios to Namastack outbox's published figures (different machine and transport)."""
    rate = float(results.get("sustained_rate") or 0.0)
    hold = results.get("holds", {}).get("90", {})
    p99_ms = hold.get("commit_to_clickhouse", {}).get("p99_ms", float("nan"))
    return {
        "records_per_s_ratio": rate / NAMASTACK_RECORDS_PER_S,
        "records_per_s_per_instance_ratio": rate / (NAMASTACK_RECORDS_PER_S / NAMASTACK_INSTANCES),
        "p99_ratio": (p99_ms / 1000) / NAMASTACK_P99_S,
    }
