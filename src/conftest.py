"""Shared fixtures: the real PostgreSQL (pytest-django's test database), the real
ClickHouse engine (a fresh embedded data folder, or a fresh database on a
server when CLICKHOUSE_URL points at one) and helpers to run relay processes.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from django.conf import settings
from django.db import transaction
from sentry_sdk.transport import Transport

from core.sentry import configure_sentry
from event_log import Event, clickhouse, publish, schema, sql

SRC = Path(__file__).resolve().parent
# Names of this test run's own Redis keys and Celery queue, so that a worker or a
# suite running elsewhere on the machine neither takes nor adds work here.
RUN_ID = f"test-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session", autouse=True)
def _own_celery_queue() -> Iterator[None]:
    from core.celery import app

    previous = app.conf.task_default_queue
    app.conf.task_default_queue = RUN_ID
    yield
    app.conf.task_default_queue = previous


@pytest.fixture(autouse=True)
def _own_cache_keys(settings: Any) -> None:
    settings.CACHES = {
        alias: {**config, "KEY_PREFIX": RUN_ID} for alias, config in settings.CACHES.items()
    }


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ClickHouse of the test run's own, migrated, dropped at the end."""
    configured = str(settings.CLICKHOUSE_URL)
    if configured.startswith("chdb:"):
        url = f"chdb://{tmp_path_factory.mktemp('clickhouse')}"
        database = None
    else:
        database = f"test_die_hard_{uuid.uuid4().hex[:8]}"
        base = configured.rsplit("/", 1)[0] if configured.count("/") > 2 else configured
        url = f"{base}/{database}"
        with clickhouse.client(f"{base}/default") as ch:
            ch.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    settings.CLICKHOUSE_URL = url
    with clickhouse.client(url) as ch:
        schema.apply_migrations(ch)
    yield url
    settings.CLICKHOUSE_URL = configured
    if database:
        with clickhouse.client(configured) as ch:
            ch.command(f"DROP DATABASE IF EXISTS `{database}`")


class ClickHouseProbe:
    """Opens the engine only for the duration of one call, so relay processes can own it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.table = settings.EVENT_LOG["CLICKHOUSE_TABLE"]

    def query(self, statement: str, **parameters: Any) -> list[tuple[Any, ...]]:
        with clickhouse.client(self.url) as ch:
            return list(ch.query(statement, parameters=parameters).result_rows)

    def command(self, statement: str) -> Any:
        with clickhouse.client(self.url) as ch:
            return ch.command(statement)

    def event_ids(self) -> list[uuid.UUID]:
        """Every event_id in the table, duplicates kept (so a set comparison plus a
        length comparison proves exactly-once)."""
        return [row[0] for row in self.query(f"SELECT event_id FROM {self.table}")]

    def rows(self) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT event_id, event_type, event_date_time, environment, event_context, "
            f"metadata_version FROM {self.table} ORDER BY event_date_time, event_id"
        )

    def truncate(self) -> None:
        """Empty the event table and the batch chain's copy (PostgreSQL's ledger is
        emptied with every other table between tests)."""
        self.command(f"TRUNCATE TABLE {self.table}")
        self.command(f"TRUNCATE TABLE IF EXISTS {self.table}_batches")


@pytest.fixture
def ch(clickhouse_url: str) -> ClickHouseProbe:
    """The test's ClickHouse, emptied before the test."""
    probe = ClickHouseProbe(clickhouse_url)
    probe.truncate()
    return probe


@pytest.fixture(autouse=True)
def _no_kicks_by_default(settings: Any) -> None:
    """Tests drive the relay themselves unless they ask for the on-commit kick."""
    settings.EVENT_LOG = {**settings.EVENT_LOG, "KICK_ENABLED": False}


@pytest.fixture
def process_env(clickhouse_url: str) -> dict[str, str]:
    """Environment for child processes (relays, workers) that share the test's databases."""
    # A client an earlier test left in a reference cycle (an exception raised through a
    # relay keeps its frames) would hold the embedded engine until the collector runs:
    # collect now, so the children can open it.
    gc.collect()
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        CLICKHOUSE_URL=clickhouse_url,
        PYTHONPATH=str(SRC),
        DJANGO_SETTINGS_MODULE="core.settings",
        LOG_FORMAT="json",
        CACHE_KEY_PREFIX=RUN_ID,
        CELERY_QUEUE=RUN_ID,
    )
    if db.get("PASSWORD"):
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        )
    return env


def run_manage(
    *args: str, env: dict[str, str | None], base: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` in a child process with ``base`` (default: this environment)
    updated by ``env``; a None value removes that variable."""
    child = dict(os.environ if base is None else base)
    for key, value in env.items():
        if value is None:
            child.pop(key, None)
        else:
            child[key] = value
    return subprocess.run(
        [sys.executable, str(SRC / "manage.py"), *args],
        env=child,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def manage(process_env: dict[str, str]) -> Any:
    """Run ``manage.py`` in a child process sharing the test's databases."""

    def run(*args: str, env: dict[str, str | None] | None = None, timeout: float = 120) -> Any:
        return run_manage(*args, env=env or {}, base=process_env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """A test database per checkout, so two checkouts can run their suites side by side."""
    import hashlib

    suffix = hashlib.sha1(str(SRC).encode(), usedforsecurity=False).hexdigest()[:8]
    test = settings.DATABASES["default"].setdefault("TEST", {})
    test["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_{suffix}"


@pytest.fixture(autouse=True)
def _generous_rate_limit(settings: Any) -> None:
    """Tests post many users from one address; the rate-limit test sets its own."""
    settings.API_USERS_CREATE_RATE = "100000/s"


# -- helpers shared by the test modules ----------------------------------------


class Ping(Event):
    """A small event for tests."""

    n: int
    text: str = ""


def publish_pings(count: int, *, chunk: int = 5_000) -> list[uuid.UUID]:
    """Publish ``count`` events in transactions of ``chunk``; returns their ids in order."""
    ids: list[uuid.UUID] = []
    for start in range(0, count, chunk):
        with transaction.atomic():
            ids += publish(*(Ping(n=i) for i in range(start, min(count, start + chunk))))
    return ids


def tsv_line(
    event_id: Any,
    event_type: str,
    at: Any,
    context: str = "{}",
    *,
    environment: str = "test",
    batch_id: Any = None,
) -> bytes:
    """One row as the relay sends it (TabSeparated, ``sql.RELAY_COLUMNS``), written by
    hand: ``metadata_version`` 1, the envelope empty, then ``batch_id`` (a new one
    unless given)."""
    fields = [str(event_id), event_type, str(at), environment, context, "1"]
    fields += [""] * (len(sql.CLICKHOUSE_COLUMNS) - len(fields))
    fields.append(str(batch_id if batch_id is not None else uuid.uuid4()))
    return ("\t".join(fields) + "\n").encode()


def assert_exactly_once(ch: ClickHouseProbe, published: list[uuid.UUID]) -> None:
    """ClickHouse holds each published event id once, and nothing else."""
    delivered = ch.event_ids()
    missing = set(published) - set(delivered)
    extra = set(delivered) - set(published)
    assert not missing, f"{len(missing)} events lost"
    assert not extra, f"{len(extra)} unexpected events"
    assert len(delivered) == len(published), "some event was delivered twice"


def unused_port() -> int:
    """A local port nothing listens on (for 'unreachable' scenarios and test servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


WORKER = ("worker", "--pool=solo", "--without-mingle", "--without-gossip", "--loglevel=INFO")


def celery_argv(*args: str) -> list[str]:
    """The command line of a Celery worker or Beat of this project."""
    return [sys.executable, "-m", "celery", "--workdir", str(SRC), "-A", "core", *args]


@contextmanager
def running(
    argv: list[str], *, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process writing to ``log``, stopped with SIGTERM (then SIGKILL) on exit."""
    with (
        log.open("wb") as out,
        subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT) as proc,
    ):
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def insert_outbox_rows(
    times: list[Any], *, contexts: list[str] | None = None, event_type: str = "ping"
) -> list[uuid.UUID]:
    """Outbox rows written directly, as a replay, a backfill or a buggy writer could leave
    them: chosen times (``datetime`` or PostgreSQL text such as ``'infinity'``) and
    contexts (default valid JSON). Returns their event ids in outbox id order."""
    from django.db import connection

    event_ids = [uuid.uuid4() for _ in times]
    contexts = contexts or [f'{{"n": {n}}}' for n in range(len(times))]
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO event_log_outbox (event_id, event_type, event_date_time, environment,"
            " event_context, metadata_version)"
            " SELECT event_id, %s, at, 'test', context, 1"
            " FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[]) WITH ORDINALITY"
            " AS r(event_id, at, context, n) ORDER BY n",
            [
                event_type,
                event_ids,
                [t if isinstance(t, str) else t.isoformat() for t in times],
                contexts,
            ],
        )
    return event_ids


def fast_config(**overrides: Any) -> Any:
    """Relay settings with short back-offs, so fault tests recover within seconds."""
    from event_log.conf import event_log_settings

    return event_log_settings(BACKOFF_INITIAL=0.05, BACKOFF_MAX=0.2, **overrides)


def insert_poison_row() -> uuid.UUID:
    """A row ClickHouse refuses (its CHECK wants JSON), as a buggy writer could leave."""
    from datetime import UTC, datetime

    return insert_outbox_rows([datetime.now(UTC)], contexts=['{"n": 1, oops'])[0]


def relay_process(
    process_env: dict[str, str], *args: str, env: dict[str, str] | None = None, log: Any = None
) -> subprocess.Popen[bytes]:
    """A ``manage.py relay_events`` process sharing the test's databases."""
    return subprocess.Popen(
        [sys.executable, str(SRC / "manage.py"), "relay_events", *args],
        env={**process_env, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )


def kill_relays_at_random(
    process_env: dict[str, str],
    env: dict[str, str],
    *,
    seed: int,
    rounds: int,
    relays: int = 1,
    longest_life: float = 0.6,
    enough: int | None = None,
) -> int:
    """Start relay processes and SIGKILL them at random moments, round after round,
    until the outbox is empty, ``rounds`` are done or ``enough`` kills landed mid-drain.
    Returns how many kills landed while the relays were draining."""
    from event_log.models import OutboxEvent

    rng = random.Random(seed)  # noqa: S311 (test timing, not security)
    kills_mid_drain = 0
    for _ in range(rounds):
        depth_before = OutboxEvent.objects.count()
        if depth_before == 0 or kills_mid_drain == enough:
            break
        procs = [relay_process(process_env, env=env, log=subprocess.PIPE) for _ in range(relays)]
        for proc in procs:
            assert proc.stderr is not None
            for line in proc.stderr:
                if b"relay_started" in line:
                    break
        time.sleep(rng.uniform(0.0, longest_life))
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=30)
            assert proc.stderr is not None
            proc.stderr.close()
        if 0 < OutboxEvent.objects.count() < depth_before:
            kills_mid_drain += 1
    return kills_mid_drain


# -- a ClickHouse HTTP front end over the embedded engine ------------------------


class HttpClickHouse:
    """The test's ClickHouse reached over HTTP: ``url`` for relays, ``front`` to arm
    faults and read what it did, ``probe`` to look at the table (through HTTP)."""

    def __init__(self, front: Any) -> None:
        self.front = front
        self.url: str = front.url
        self.probe = ClickHouseProbe(self.url)

    def arm(self, fault: Any) -> Any:
        return self.front.arm(fault)


@pytest.fixture
def clickhouse_http(
    clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpClickHouse]:
    """A ClickHouse HTTP server on 127.0.0.1 over the test's embedded engine (its own
    engine when the suite runs against a server), migrated, the table emptied.
    Closed at the end, so relay processes can open the embedded engine again."""
    from event_log.testing.clickhouse_http import serving

    path = clickhouse.embedded_path(clickhouse_url)
    own = path is None
    with serving(path or tmp_path_factory.mktemp("clickhouse-http")) as front:
        if own:
            with clickhouse.client(front.url) as client:
                schema.apply_migrations(client)
        http = HttpClickHouse(front)
        http.probe.truncate()
        yield http


class CapturingTransport(Transport):
    """Keeps what the real SDK would send, instead of sending it."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.envelopes: list[Any] = []

    def capture_envelope(self, envelope: Any) -> None:
        self.envelopes.append(envelope)

    def items(self, kind: str) -> list[Any]:
        return [
            item.payload.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == kind
        ]

    def everything(self) -> str:
        """Every item of every envelope as text, for "this value is nowhere" checks."""
        return "\n".join(
            item.get_bytes().decode("utf-8", "replace")
            for envelope in self.envelopes
            for item in envelope.items
        )


@pytest.fixture
def sentry_capture() -> Iterator[CapturingTransport]:
    """Sentry as the settings configure it, with a transport that keeps the envelopes."""
    transport = CapturingTransport()
    configure_sentry(
        dsn="https://public@sentry.example.invalid/1",
        environment="test",
        traces_sample_rate=1.0,
        transport=transport,
    )
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # back to disabled
