"""End to end through a real Celery worker and Beat over the real Redis broker."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.db import transaction

from conftest import RUN_ID, WORKER, Ping, celery_argv, running, unused_port, wait_until
from event_log import kick, publish
from event_log.kick import KICK_PENDING_KEY, KICK_PENDING_TTL, kicks_paused, request_relay_run
from event_log.models import OutboxEvent
from users.use_cases import CreateUser, CreateUserRequest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SRC = Path(__file__).resolve().parents[1]
QUEUE = RUN_ID


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The broker's Redis database, with the relay queue emptied before and after."""
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete(QUEUE)
    yield client
    client.delete(QUEUE)
    client.close()


@pytest.fixture
def kicks_on(settings):
    from django.core.cache import cache

    settings.EVENT_LOG = {**settings.EVENT_LOG, "KICK_ENABLED": True}
    cache.delete(KICK_PENDING_KEY)
    kick._paused_until = 0.0
    yield
    kick._paused_until = 0.0
    kick._clear_flag()  # tolerates a test that took the cache away


def wait_for_log(log: Path, text: str, *, timeout: float = 60) -> None:
    wait_until(lambda: text in log.read_text(errors="replace"), timeout=timeout, interval=0.1)


def outbox_empty() -> bool:
    return not OutboxEvent.objects.exists()


def test_a_burst_of_transactions_enqueues_one_kick_while_it_waits(broker, kicks_on):
    started = time.monotonic()
    for i in range(10_000):
        with transaction.atomic():
            publish(Ping(n=i))
    elapsed = time.monotonic() - started

    # One kick waits for the worker; the flag is re-armed only if it outlives its TTL.
    assert 1 <= broker.llen(QUEUE) <= 1 + int(elapsed // KICK_PENDING_TTL)
    assert OutboxEvent.objects.count() == 10_000


def test_a_started_relay_run_lets_the_next_commit_kick_again(broker, kicks_on):
    from event_log.kick import kick_started

    assert request_relay_run() is True
    assert request_relay_run() is False
    kick_started()  # what the task does first
    assert request_relay_run() is True
    assert broker.llen(QUEUE) == 2


def test_on_commit_kick_delivers_well_before_the_next_beat_tick(
    broker, kicks_on, ch, process_env, tmp_path
):
    env = {**process_env, "EVENT_LOG_KICK": "true", "EVENT_LOG_RELAY_INTERVAL": "600"}
    log = tmp_path / "worker.log"
    with running(celery_argv(*WORKER), env=env, log=log):
        wait_for_log(log, "ready")
        # Warm the worker's ClickHouse client so the timing below is the kick's alone.
        with transaction.atomic():
            publish(Ping(n=0))
        wait_until(outbox_empty, timeout=60)

        response = CreateUser().execute(CreateUserRequest(email="ada@example.com"))
        [event_id] = OutboxEvent.objects.values_list("event_id", flat=True)
        elapsed = wait_until(outbox_empty, timeout=60)

    assert elapsed < 60, "delivered by the kick, not by a Beat tick 600 s away"
    assert response.error == ""
    assert event_id in set(ch.event_ids())


def test_worker_and_beat_deliver_with_nobody_calling_the_relay(broker, ch, process_env, tmp_path):
    env = {**process_env, "EVENT_LOG_KICK": "false", "EVENT_LOG_RELAY_INTERVAL": "0.5"}
    schedule = tmp_path / "beat-schedule"
    with (
        running(celery_argv(*WORKER), env=env, log=tmp_path / "worker.log"),
        running(
            celery_argv("beat", "--schedule", str(schedule), "--loglevel=INFO"),
            env=env,
            log=tmp_path / "beat.log",
        ),
    ):
        with transaction.atomic():
            published = publish(*(Ping(n=i) for i in range(100)))
        wait_until(outbox_empty, timeout=90)

    delivered = ch.event_ids()
    assert set(delivered) == set(published)
    assert len(delivered) == len(published)


def test_commits_go_on_when_redis_is_down_and_kicking_pauses(kicks_on, settings, client):
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{unused_port()}/0",
        }
    }

    first = CreateUser().execute(CreateUserRequest(email="ada@example.com"))
    assert first.error == ""
    wait_until(kicks_paused, timeout=10)  # the background kick failed and paused kicking
    assert request_relay_run() is False
    response = client.post(
        "/api/users", data={"email": "bob@example.com"}, content_type="application/json"
    )

    assert response.status_code == 201, "the rate limiter fails open without its cache"
    assert OutboxEvent.objects.count() == 2


def _log_records(log: Path) -> list[dict[str, object]]:
    """The JSON log lines of a process (banners and other plain text skipped)."""
    records = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def _after_ready(records: list[dict[str, object]]) -> list[dict[str, object]]:
    ready = next(i for i, r in enumerate(records) if str(r["event"]).endswith(" ready."))
    return records[ready + 1 :]


def test_an_idle_stack_logs_nothing_per_tick_and_a_delivery_logs_one_line(
    broker, ch, process_env, tmp_path
):
    env = {
        **process_env,
        "EVENT_LOG_KICK": "false",
        "EVENT_LOG_RELAY_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
    }
    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    with (
        running(celery_argv(*WORKER), env=env, log=worker_log),
        running(
            celery_argv("beat", "--schedule", str(tmp_path / "schedule"), "--loglevel=INFO"),
            env=env,
            log=beat_log,
        ),
    ):
        wait_for_log(worker_log, "ready")
        time.sleep(2)  # about ten idle Beat ticks, each a relay run that finds nothing
        with transaction.atomic():
            [event_id] = publish(Ping(n=1))
        wait_until(outbox_empty, timeout=60)  # delivered by a Beat tick: kicks are off
        time.sleep(1)  # and a few idle ticks after it

    worker_events = [r["event"] for r in _after_ready(_log_records(worker_log))]
    assert worker_events == ["outbox_batch_delivered"]
    assert _log_records(beat_log) == []
    assert ch.event_ids() == [event_id]


def test_a_worker_log_line_never_carries_the_previous_tasks_id(broker, ch, process_env, tmp_path):
    env = {
        **process_env,
        "EVENT_LOG_KICK": "false",
        "EVENT_LOG_RELAY_INTERVAL": "0.2",
        "LOG_LEVEL": "DEBUG",  # the routine per-task lines are DEBUG
    }
    worker_log = tmp_path / "worker.log"
    received = re.compile(r"Task event_log\.tasks\.relay_outbox\[([0-9a-f-]+)\] received")

    def received_lines() -> list[dict[str, object]]:
        return [r for r in _log_records(worker_log) if received.match(str(r["event"]))]

    with (
        running(celery_argv(*WORKER), env=env, log=worker_log),
        running(
            celery_argv("beat", "--schedule", str(tmp_path / "schedule"), "--loglevel=INFO"),
            env=env,
            log=tmp_path / "beat.log",
        ),
    ):
        wait_until(lambda: len(received_lines()) >= 4, timeout=60)

    lines = received_lines()
    assert len(lines) >= 4
    for line in lines:
        match = received.match(str(line["event"]))
        assert match is not None
        assert line.get("task_id", match.group(1)) == match.group(1), line
