"""Plumbing shared by the benchmarks: dedicated databases, Django, probes, statistics.

Every benchmark run gets databases of its own, so it never touches development
data and always starts from the same state:

- PostgreSQL: a database (``die_hard_bench`` by default) on the server named by
  ``DATABASE_URL``, dropped and re-created, then migrated;
- ClickHouse: a fresh embedded data folder when ``CLICKHOUSE_URL`` is ``chdb:``
  (the default), or a ``die_hard_bench`` database when it names a server;
- Redis: its own cache and broker database numbers and its own cache key prefix.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RESULTS = REPO / "bench" / "results"

# Redis database numbers the benchmark owns (cache, Celery broker).
BENCH_REDIS_DB = 14
BENCH_BROKER_DB = 15
BENCH_CLICKHOUSE_DATABASE = "die_hard_bench"


@dataclass(frozen=True, slots=True)
class BenchEnv:
    """Where this run's databases are; ``child_env()`` is the environment for subprocesses."""

    database_url: str
    clickhouse_url: str
    redis_url: str
    broker_url: str
    clickhouse_dir: Path | None
    # The Celery queue and cache key prefix of this run: two runs at once stay apart.
    queue: str

    def child_env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC)
        env.update(overrides)
        return env


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def prepare_environment(*, database: str, clickhouse_dir: Path) -> BenchEnv:
    """Point every setting at the benchmark's own databases; call before ``django.setup()``."""
    os.environ.setdefault(
        "ENV_FILE",
        str(SRC / "core" / (".env" if (SRC / "core" / ".env").is_file() else ".env.ci")),
    )
    import environ  # noqa: PLC0415 (after ENV_FILE is settled)

    env_file = Path(os.environ["ENV_FILE"])
    if env_file.is_file():
        environ.Env.read_env(str(env_file), overwrite=False)
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))

    run_id = f"{database}-{os.getpid()}"
    database_url = _with_path(os.environ["DATABASE_URL"], f"/{database}")
    configured_ch = os.environ.get("CLICKHOUSE_URL", "chdb:var/clickhouse")
    if configured_ch.startswith("chdb:"):
        clickhouse_url = f"chdb://{clickhouse_dir.resolve()}"
        ch_dir: Path | None = clickhouse_dir.resolve()
    else:
        clickhouse_url = _with_path(configured_ch, f"/{BENCH_CLICKHOUSE_DATABASE}")
        ch_dir = None
    redis_url = _with_path(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), f"/{BENCH_REDIS_DB}"
    )
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
    broker_url = _with_path(broker, f"/{BENCH_BROKER_DB}") if broker.startswith("redis") else broker

    os.environ.update(
        DJANGO_SETTINGS_MODULE="core.settings",
        DATABASE_URL=database_url,
        CLICKHOUSE_URL=clickhouse_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=broker_url,
        CACHE_KEY_PREFIX=f"die-hard-bench-{run_id}",
        CELERY_QUEUE=f"die-hard-bench-{run_id}",
        # Production-like: DEBUG off (Django would otherwise keep every query it ran).
        DEBUG="false",
        EVENT_LOG_KICK="false",
        # As deployed: JSON lines at INFO (the bench process writes them to a file).
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        SENTRY_DSN="",
        SENTRY_TRACES_SAMPLE_RATE="0",
        PYTHONPATH=str(SRC),
    )
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-not-used-anywhere-else")
    return BenchEnv(
        database_url=database_url,
        clickhouse_url=clickhouse_url,
        redis_url=redis_url,
        broker_url=broker_url,
        clickhouse_dir=ch_dir,
        queue=f"die-hard-bench-{run_id}",
    )


def recreate_postgres_database(database_url: str) -> None:
    import psycopg  # noqa: PLC0415
    from psycopg import sql  # noqa: PLC0415

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = _with_path(database_url, "/postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup_django(bench: BenchEnv, *, fresh: bool = True) -> None:
    """``django.setup()`` on the bench databases; with ``fresh``, re-create and migrate them."""
    if fresh:
        recreate_postgres_database(bench.database_url)
    import django  # noqa: PLC0415

    django.setup()
    if not fresh:
        return
    from django.core.management import call_command  # noqa: PLC0415

    from event_log import clickhouse, schema  # noqa: PLC0415

    call_command("migrate", verbosity=0, interactive=False)
    if bench.clickhouse_dir is not None:
        shutil.rmtree(bench.clickhouse_dir, ignore_errors=True)
        bench.clickhouse_dir.mkdir(parents=True)
    else:
        base = bench.clickhouse_url.rsplit("/", 1)[0]
        with clickhouse.client(f"{base}/default") as ch:
            ch.command(f"DROP DATABASE IF EXISTS `{BENCH_CLICKHOUSE_DATABASE}`")
    with clickhouse.client(bench.clickhouse_url) as ch:
        schema.apply_migrations(ch)


def redirect_logs(path: Path) -> None:
    """Send this process's log lines to ``path`` (the console stays for the results)."""
    import logging  # noqa: PLC0415

    stream = path.open("a", encoding="utf-8")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


# -- ClickHouse ------------------------------------------------------------------


class ClickHouseProbe:
    """Reads the bench's event table; ``opened()`` holds a client only as long as needed.

    The embedded engine can be opened by one process at a time, so the probe
    must be closed before a worker process takes the engine over.
    """

    def __init__(self, url: str, table: str) -> None:
        self.url = url
        self.table = table
        self._client: Any = None

    @contextlib.contextmanager
    def opened(self) -> Iterator[ClickHouseProbe]:
        from event_log import clickhouse  # noqa: PLC0415

        own = self._client is None
        if own:
            self._client = clickhouse.connect(self.url)
        try:
            yield self
        finally:
            if own:
                self._client.close()
                self._client = None

    def query(self, statement: str, **parameters: Any) -> list[tuple[Any, ...]]:
        with self.opened():
            return list(self._client.query(statement, parameters=parameters).result_rows)

    def command(self, statement: str) -> Any:
        with self.opened():
            return self._client.command(statement)

    def event_ids(self) -> list[uuid.UUID]:
        return [row[0] for row in self.query(f"SELECT event_id FROM {self.table}")]

    def count_and_unique(self) -> tuple[int, int]:
        count, unique = self.query(f"SELECT count(), uniqExact(event_id) FROM {self.table}")[0]
        return int(count), int(unique)

    def block_number(self) -> int:
        """The table's last block number: MergeTree takes one per INSERT; merges keep them."""
        rows = self.query(
            "SELECT max(max_block_number) FROM system.parts "
            "WHERE database = currentDatabase() AND table = %(t)s",
            t=self.table,
        )
        return int(rows[0][0] or 0)

    def truncate(self) -> None:
        self.command(f"TRUNCATE TABLE {self.table}")

    def version(self) -> str:
        return str(self.command("SELECT version()"))


def exactly_once(probe: ClickHouseProbe, published: Sequence[uuid.UUID]) -> tuple[bool, str]:
    """Every published id in ClickHouse, once: same set and same count."""
    delivered = probe.event_ids()
    same_set = set(delivered) == set(published)
    same_count = len(delivered) == len(published)
    detail = f"{len(delivered):,} rows in ClickHouse for {len(published):,} published"
    if not same_set:
        missing = len(set(published) - set(delivered))
        extra = len(set(delivered) - set(published))
        detail += f"; {missing:,} missing, {extra:,} unknown"
    if not same_count and same_set:
        detail += f"; {len(delivered) - len(set(delivered)):,} duplicates"
    return same_set and same_count, detail


# -- PostgreSQL ------------------------------------------------------------------


def publish_backlog(n: int, *, chunk: int = 1_000, start: int = 0) -> list[uuid.UUID]:
    """Publish ``n`` ``UserCreated`` events through ``publish()``, ``chunk`` per transaction."""
    from django.db import transaction  # noqa: PLC0415

    from event_log import publish  # noqa: PLC0415
    from users.events import UserCreated  # noqa: PLC0415

    ids: list[uuid.UUID] = []
    for lo in range(start, start + n, chunk):
        hi = min(lo + chunk, start + n)
        events = [
            UserCreated(
                user_id=i,
                email=f"user{i}@example.com",
                first_name="Ada",
                last_name="Lovelace",
            )
            for i in range(lo, hi)
        ]
        with transaction.atomic():
            ids.extend(publish(*events))
    return ids


TEMPLATE_TABLE = "bench_backlog_template"
# The envelope's columns (event_log.sql.ENVELOPE_COLUMNS), copied with the events.
ENVELOPE = "actor_type, actor_id, subject_type, subject_id, request_id, traceparent"


def make_backlog_template(n: int) -> None:
    """Publish ``n`` events through ``publish()`` once and keep them as the backlog template.

    Every throughput and memory run then fills the outbox with copies of these
    rows (``fill_backlog``), each with a fresh ``event_id`` and a new publish
    time, in one statement: a fraction of the time of publishing them again.
    """
    from django.db import connection  # noqa: PLC0415

    publish_backlog(n, chunk=5_000)
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TEMPLATE_TABLE}")
        cur.execute(
            f"CREATE TABLE {TEMPLATE_TABLE} AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, "
            f"event_type, environment, event_context, metadata_version, {ENVELOPE} "
            "FROM event_log_outbox"
        )
        cur.execute(f"CREATE UNIQUE INDEX ON {TEMPLATE_TABLE} (n)")
        cur.execute("TRUNCATE event_log_outbox, event_log_batch")


def fill_backlog(n: int) -> list[uuid.UUID]:
    """Put ``n`` events in the (empty) outbox, in publish order; returns their event ids."""
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {TEMPLATE_TABLE}")
        size = int(cur.fetchone()[0])
        cur.execute(
            "INSERT INTO event_log_outbox (event_id, event_type, event_date_time, environment,"
            f" event_context, metadata_version, {ENVELOPE})"
            " SELECT gen_random_uuid(), t.event_type, clock_timestamp(), t.environment,"
            " t.event_context, t.metadata_version, "
            + ", ".join(f"t.{column}" for column in ENVELOPE.split(", "))
            + f" FROM generate_series(0, %s - 1) AS g JOIN {TEMPLATE_TABLE} AS t ON t.n = g %% %s"
            " ORDER BY g",
            [n, size],
        )
        cur.execute("SELECT event_id FROM event_log_outbox ORDER BY id")
        return [row[0] for row in cur.fetchall()]


def settle_postgres() -> None:
    """Vacuum the event log tables and checkpoint, so every timed run starts alike."""
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE event_log_outbox")
        cur.execute("VACUUM ANALYZE event_log_batch")
        cur.execute("CHECKPOINT")


def empty_outbox() -> None:
    """Forget events left by a benchmark that only measured publishing."""
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute("TRUNCATE event_log_outbox, event_log_batch")


def outbox_depth() -> int:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM event_log_outbox")
        return int(cur.fetchone()[0])


def postgres_version() -> str:
    from django.db import connection  # noqa: PLC0415

    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        return str(cur.fetchone()[0])


# -- Redis -----------------------------------------------------------------------


def clear_redis(bench: BenchEnv) -> None:
    """Empty the bench's broker queue and its kick flag (its own databases only)."""
    import redis  # noqa: PLC0415

    from event_log.kick import KICK_PENDING_KEY  # noqa: PLC0415

    if bench.broker_url.startswith("redis"):
        with contextlib.closing(redis.Redis.from_url(bench.broker_url)) as broker:
            broker.delete(bench.queue)
    from django.core.cache import cache  # noqa: PLC0415

    cache.delete(KICK_PENDING_KEY)


# -- measurements ----------------------------------------------------------------


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    with contextlib.suppress(OSError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return []


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far by this process (all its threads, the embedded engine's
    included) and by PostgreSQL on this machine (its live processes, and through the
    postmaster's reaped-children times, the backends that have exited since: for a
    moment after it exits, a backend is in neither, so wait a little after closing one)."""
    own = os.times()
    return {"process": own.user + own.system, "postgres": _postgres_cpu_seconds()}


def _postgres_cpu_seconds() -> float:
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name, rest = text.split("(", 1)[1].rsplit(")", 1)
            if name != "postgres":
                continue
            fields = rest.split()
            # utime, stime, cutime, cstime (fields 14-17 of proc_pid_stat(5))
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


# The embedded engine's data goes to a tmpfs when there is one with this much room. On
# this machine's ext4, creating a part's files grew slower the more parts had been
# deleted recently (kernel time in ext4_create/recently_deleted): an INSERT of 1,000 rows
# went from 6 to 18 ms over six drains of 100 inserts each, which drifted the rounds and
# made ClickHouse's cost hide the relays' own (docs/performance.md, section 2).
TMPFS = Path("/dev/shm")  # noqa: S108 (each run makes a private folder in it, mkdtemp)
TMPFS_ROOM = 8 << 30


def default_clickhouse_under() -> Path | None:
    """TMPFS when it is a tmpfs with TMPFS_ROOM free, else None (the run's folder)."""
    if filesystem_of(TMPFS) != "tmpfs":
        return None
    try:
        usage = shutil.disk_usage(TMPFS)
    except OSError:
        return None
    return TMPFS if usage.free >= TMPFS_ROOM and os.access(TMPFS, os.W_OK) else None


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on (ext4, tmpfs, ...), from /proc/mounts."""
    path = path.resolve()
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount_point, fstype, *_ = line.split()
            if (path == Path(mount_point) or Path(mount_point) in path.parents) and len(
                mount_point
            ) > len(best):
                best, kind = mount_point, fstype
    return kind


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def rss_mb() -> float:
    """Resident set size of this process in MiB, from /proc/self/status."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


@dataclass(slots=True)
class Stopwatch:
    started: float = 0.0
    elapsed: float = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.started


def source_revision() -> str:
    """The commit measured, marked when src/ has uncommitted changes."""
    import subprocess  # noqa: PLC0415

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "src")
    return revision + (" + uncommitted changes in src/" if dirty else "")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import celery  # noqa: PLC0415
    import chdb  # noqa: PLC0415
    import clickhouse_connect  # noqa: PLC0415
    import django  # noqa: PLC0415
    import psycopg  # noqa: PLC0415

    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": django.__version__,
        "psycopg": psycopg.__version__,
        "clickhouse_connect": clickhouse_connect.common.version(),
        "chdb": getattr(chdb, "__version__", "unknown"),
        "celery": celery.__version__,
    }


def redis_version(url: str) -> str:
    import redis  # noqa: PLC0415

    with contextlib.closing(redis.Redis.from_url(url)) as client:
        return str(client.info("server").get("redis_version", "unknown"))


def postgres_settings() -> dict[str, str]:
    """The PostgreSQL settings that weigh most on commit latency and write throughput."""
    from django.db import connection  # noqa: PLC0415

    names = ("synchronous_commit", "fsync", "shared_buffers", "max_wal_size", "wal_sync_method")
    found = {}
    with connection.cursor() as cur:
        for name in names:
            cur.execute(f"SHOW {name}")
            found[name] = str(cur.fetchone()[0])
    return found
