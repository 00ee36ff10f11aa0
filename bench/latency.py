"""3. Latency (commit → delivered) and 4. insert economy, through a real Celery worker.

The relay runs where it runs in production: in a Celery worker process
(``--pool=solo``, the embedded engine's owner), started for each phase with the
bench's databases and broker. This process only publishes and watches:

- (a) kick: every commit runs the real on-commit kick
  (``event_log.kick.request_relay_run``: Redis ``SET NX`` + ``apply_async``),
  the worker runs ``event_log.tasks.relay_outbox``; no Beat;
- (b) Beat: no kick; a real ``celery beat`` process sends ``relay_outbox``
  every ``EVENT_LOG_RELAY_INTERVAL`` seconds.

*Delivered* is measured as "the outbox row is gone": the relay deletes a
batch's rows only after ClickHouse acknowledged its INSERT, so a deleted row is
a row already visible in ClickHouse. A poller thread reads the outbox every few
milliseconds on its own connection; the commit time is taken by an on-commit
callback registered before ``publish()``, so it runs right after COMMIT (and
before the kick). The error is at most one poll interval plus one poll query, and
always makes latency look longer, never shorter. After each phase the worker is
stopped and the phase's event ids are checked in ClickHouse (exactly once).

Inserts are counted in PostgreSQL: a trigger on ``event_log_batch`` (installed in
the bench database only) records each finished batch, and the relay sends each
batch in one INSERT.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import SRC, BenchEnv, ClickHouseProbe, clear_redis, exactly_once, percentile

POLL_INTERVAL = 0.005

BATCH_COUNTER_DDL = """
CREATE TABLE IF NOT EXISTS bench_finished_batch (
    id uuid NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION bench_record_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_finished_batch (id) VALUES (OLD.id);
    RETURN OLD;
END $$;
DROP TRIGGER IF EXISTS bench_record_batch ON event_log_batch;
CREATE TRIGGER bench_record_batch AFTER DELETE ON event_log_batch
    FOR EACH ROW EXECUTE FUNCTION bench_record_batch();
"""
BATCH_COUNTER_DROP = """
DROP TRIGGER IF EXISTS bench_record_batch ON event_log_batch;
DROP FUNCTION IF EXISTS bench_record_batch();
DROP TABLE IF EXISTS bench_finished_batch;
"""


def _sql(statements: str) -> None:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute(statements)


def finished_batches() -> int:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM bench_finished_batch")
        return int(cur.fetchone()[0])


def _set_kick(enabled: bool) -> None:
    from django.conf import settings  # noqa: PLC0415

    settings.EVENT_LOG = {**settings.EVENT_LOG, "KICK_ENABLED": enabled}


@contextlib.contextmanager
def _celery(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "celery", "--workdir", str(SRC), "-A", "core", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ) as proc,
    ):
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _outbox_empty() -> bool:
    from event_log.models import OutboxEvent  # noqa: PLC0415

    return not OutboxEvent.objects.exists()


class Watcher:
    """Publishes events at a steady rate and sees each one leave the outbox."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pending: dict[uuid.UUID, float] = {}
        self.latencies: list[float] = []
        self.published: list[uuid.UUID] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.polls = 0
        self.thread = threading.Thread(target=self._poll, name="outbox-poller", daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _poll(self) -> None:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.stop.is_set():
                with self.lock:
                    watched = dict(self.pending)
                if watched:
                    seen_at = time.monotonic()
                    present = {
                        row[0] for row in conn.execute("SELECT event_id FROM event_log_outbox")
                    }
                    gone = [eid for eid in watched if eid not in present]
                    self.polls += 1
                    with self.lock:
                        for eid in gone:
                            self.latencies.append(seen_at - self.pending.pop(eid))
                time.sleep(POLL_INTERVAL)

    def publish_one(self, n: int) -> None:
        from django.db import transaction  # noqa: PLC0415

        from event_log import publish  # noqa: PLC0415
        from users.events import UserCreated  # noqa: PLC0415

        committed: list[float] = []
        with transaction.atomic():
            # Registered before publish(), so it runs first after COMMIT, before the kick.
            transaction.on_commit(lambda: committed.append(time.monotonic()))
            [event_id] = publish(
                UserCreated(
                    user_id=n, email=f"user{n}@example.com", first_name="Ada", last_name="Lovelace"
                )
            )
        with self.lock:
            self.pending[event_id] = committed[0]
            self.published.append(event_id)

    def steady(self, *, rate: float, seconds: float, producers: int) -> dict[str, float]:
        """Publish ``rate`` events/s for ``seconds``, one event per transaction.

        ``producers`` threads share the schedule (event i is due at start + i/rate),
        as the web workers of a service would: one thread alone cannot commit
        500 transactions a second when each commit waits for the WAL flush.
        """
        from django.db import connection  # noqa: PLC0415

        total = round(rate * seconds)
        started = time.monotonic() + 0.05
        late = [0] * producers

        def produce(k: int) -> None:
            try:
                for i in range(k, total, producers):
                    wait = started + i / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    elif wait < -0.01:
                        late[k] += 1
                    self.publish_one(i)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=produce, args=(k,), name=f"producer-{k}")
            for k in range(producers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        return {
            "events": total,
            "seconds": elapsed,
            "rate": total / elapsed,
            "late": sum(late),
            "producers": producers,
        }

    def wait_delivered(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.05)
        return False


def _latency_stats(latencies: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else float("nan"),
    }


def _phase(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    workdir: Path,
    *,
    name: str,
    beat_interval: float | None,
    body: Callable[[Watcher], dict[str, Any]],
) -> dict[str, Any]:
    """Start a worker (and Beat), warm it up, run ``body``, stop, verify exactly-once."""
    kick = beat_interval is None
    probe.truncate()  # the probe's client is closed again on return: the worker owns the engine
    clear_redis(bench)
    env = bench.child_env(
        EVENT_LOG_KICK="true" if kick else "false",
        EVENT_LOG_RELAY_INTERVAL=str(beat_interval or 600),
        LOG_LEVEL="INFO",
    )
    worker_log = workdir / f"{name}-worker.log"
    worker_args = [
        "worker",
        "--pool=solo",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "--loglevel=INFO",
        "-Q",
        bench.queue,
    ]
    _set_kick(kick)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_celery(worker_args, env, worker_log))
            _wait_until(
                lambda: " ready" in worker_log.read_text(errors="replace"),
                timeout=120,
                what="celery worker ready",
            )
            if beat_interval is not None:
                schedule = workdir / f"{name}-beat-schedule"
                stack.enter_context(
                    _celery(
                        ["beat", "--schedule", str(schedule), "--loglevel=INFO"],
                        env,
                        workdir / f"{name}-beat.log",
                    )
                )
            with Watcher(bench.database_url) as watcher:
                # Warm-up: the worker opens the engine and its connections on its first run.
                watcher.publish_one(-1)
                if not watcher.wait_delivered(120):
                    raise TimeoutError(f"{name}: warm-up event not delivered")
                watcher.latencies.clear()
                batches_before = finished_batches()
                result = body(watcher)
                result["inserts"] = finished_batches() - batches_before
                published = list(watcher.published)
    finally:
        _set_kick(False)
        clear_redis(bench)
    ok, detail = exactly_once(probe, published)
    result.update(name=name, exactly_once=ok, check=detail)
    return result


def run(
    bench: BenchEnv,
    probe: ClickHouseProbe,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    beat_interval: float,
    trickle_events: int,
    trickle_gap: float,
    producers: int = 6,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    _sql(BATCH_COUNTER_DDL)

    def steady(watcher: Watcher) -> dict[str, Any]:
        load = watcher.steady(rate=rate, seconds=seconds, producers=producers)
        delivered = watcher.wait_delivered(120)
        events = load["events"]
        return {
            "load": load,
            "all_delivered": delivered,
            "latency": _latency_stats(watcher.latencies),
            "events": events,
        }

    def kick_then_trickle(watcher: Watcher) -> dict[str, Any]:
        result = steady(watcher)
        before = finished_batches()
        watcher.latencies.clear()
        for i in range(trickle_events):
            watcher.publish_one(10**6 + i)
            time.sleep(trickle_gap)
        trickle_delivered = watcher.wait_delivered(60)
        result["trickle"] = {
            "events": trickle_events,
            "gap_s": trickle_gap,
            "all_delivered": trickle_delivered,
            "latency": _latency_stats(watcher.latencies),
            "inserts": finished_batches() - before,
        }
        return result

    try:
        progress(f"  (a) on-commit kick + Celery worker, {rate:.0f} events/s for {seconds:.0f} s")
        kick = _phase(
            bench, probe, workdir, name="kick", beat_interval=None, body=kick_then_trickle
        )
        kick["inserts_steady"] = kick["inserts"] - kick["trickle"]["inserts"]
        progress(_describe(kick))
        progress(f"  (b) Celery Beat every {beat_interval:g} s + worker, no kick")
        beat = _phase(bench, probe, workdir, name="beat", beat_interval=beat_interval, body=steady)
        beat["inserts_steady"] = beat["inserts"]
        progress(_describe(beat))
    finally:
        _sql(BATCH_COUNTER_DROP)
    return {
        "rate": rate,
        "seconds": seconds,
        "beat_interval": beat_interval,
        "poll_interval_s": POLL_INTERVAL,
        "producers": producers,
        "kick": kick,
        "beat": beat,
    }


def _describe(result: dict[str, Any]) -> str:
    lat = result["latency"]
    text = (
        f"    {result['load']['rate']:.0f} events/s achieved, p50 {lat['p50_s'] * 1000:.0f} ms,"
        f" p99 {lat['p99_s'] * 1000:.0f} ms, {result['inserts_steady']} inserts for"
        f" {result['events']:,} events, exactly once {'OK' if result['exactly_once'] else 'FAIL'}"
        f" ({result['check']})"
    )
    if "trickle" in result:
        t = result["trickle"]
        text += (
            f"\n    trickle: {t['events']} events one at a time, {t['inserts']} inserts,"
            f" p50 {t['latency']['p50_s'] * 1000:.0f} ms"
        )
    return text
