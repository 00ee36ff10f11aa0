import math
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection, transaction

from conftest import Ping, assert_exactly_once, publish_pings
from event_log import publish
from event_log.conf import event_log_settings
from event_log.models import OutboxBatch, OutboxEvent
from event_log.relay import Relay, backoff_delay, run_relay
from users.use_cases import CreateUser, CreateUserRequest

pytestmark = pytest.mark.django_db(transaction=True)


def test_committed_use_case_event_reaches_clickhouse_with_every_column_right(ch, settings):
    settings.ENVIRONMENT = "test-env"
    response = CreateUser().execute(
        CreateUserRequest(email="ada@example.com", first_name="Ada", last_name="Lovelace")
    )
    outbox = OutboxEvent.objects.get()
    time.sleep(0.05)  # the relay runs later than publish: event time must not move

    report = run_relay()

    assert report.delivered == 1
    [(event_id, event_type, event_time, environment, context, version)] = ch.rows()
    assert event_id == outbox.event_id
    assert event_type == "user_created"
    assert event_time.replace(tzinfo=UTC) == outbox.event_date_time
    assert environment == "test-env"
    assert context == (
        f'{{"user_id":{response.user.id},"email":"ada@example.com",'
        '"first_name":"Ada","last_name":"Lovelace"}'
    )
    assert version == 1
    assert OutboxEvent.objects.count() == 0
    assert OutboxBatch.objects.count() == 0


def test_rolled_back_transaction_reaches_neither_outbox_nor_clickhouse(ch):
    with pytest.raises(RuntimeError), transaction.atomic():
        CreateUser().execute(CreateUserRequest(email="ada@example.com"))
        raise RuntimeError("rolled back after the use case")

    run_relay()

    assert OutboxEvent.objects.count() == 0
    assert ch.event_ids() == []


def test_contexts_with_tabs_newlines_backslashes_and_unicode_arrive_unchanged(ch):
    texts = ["tab\there", "new\nline", "back\\slash", 'quote"', "ünïcødé ✓", "\\N", "\r\x00end"]
    with transaction.atomic():
        publish(*(Ping(n=i, text=t) for i, t in enumerate(texts)))
    expected = {Ping(n=i, text=t).model_dump_json() for i, t in enumerate(texts)}

    run_relay()

    assert {row[4] for row in ch.rows()} == expected


def test_relay_drains_in_batches_of_the_configured_size(ch, settings):
    settings.EVENT_LOG = {**settings.EVENT_LOG, "BATCH_SIZE": 100}
    published = publish_pings(1_050)

    report = run_relay()

    assert report.batches == 11
    assert report.drained
    assert_exactly_once(ch, published)


def test_relay_stops_at_max_batches_and_leaves_the_rest(ch, settings):
    settings.EVENT_LOG = {**settings.EVENT_LOG, "BATCH_SIZE": 10}
    publish_pings(50)

    report = run_relay(max_batches=2)

    assert report.batches == 2
    assert not report.drained
    assert OutboxEvent.objects.count() == 30


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    delays = [backoff_delay(n, initial=1.0, cap=8.0) for n in range(1, 8)]
    for attempt, delay in enumerate(delays, start=1):
        step = min(8.0, 2 ** (attempt - 1))
        assert step / 2 <= delay <= step


def test_relay_module_imports_nothing_from_celery():
    # Importing the module alone (no django.setup(), which loads core's Celery app)
    # shows exactly what the relay itself pulls in.
    code = (
        "import sys, event_log.relay; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'celery', 'kombu'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "[]", result.stdout


# -- crashes -------------------------------------------------------------------

CRASHING_RELAY = """
import sys, time, django
django.setup()
from event_log.relay import Relay

def checkpoint(step, batch):
    if step == sys.argv[1]:
        print("AT", step, batch.id, flush=True)
        time.sleep(600)

Relay(checkpoint=checkpoint).run()
"""


def _kill_relay_at(step: str, process_env: dict[str, str]) -> str:
    env = {**process_env, "EVENT_LOG_LEASE_SECONDS": "1", "EVENT_LOG_BATCH_SIZE": "1000"}
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_RELAY, step],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            line = proc.stdout.readline()
            assert line.startswith("AT " + step), f"relay never reached {step}: {line!r}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return line.split()[2]


@pytest.mark.parametrize("step", ["sealed", "inserted"])
def test_relay_killed_mid_batch_is_taken_over_after_its_lease_exactly_once(ch, process_env, step):
    published = publish_pings(2_500)

    batch_id = _kill_relay_at(step, process_env)

    assert OutboxBatch.objects.filter(id=batch_id).exists(), "the batch stays sealed"
    if step == "inserted":
        assert len(ch.event_ids()) == 1_000, "the killed relay's insert landed"
    time.sleep(1.1)  # the dead relay's lease
    run_relay()

    assert OutboxEvent.objects.count() == 0
    assert_exactly_once(ch, published)


def test_a_live_lease_is_not_taken_over(ch, settings):
    publish_pings(10)
    first = Relay()
    batch = first.claim()
    assert batch is not None

    assert Relay().claim() is None, "no unsealed rows, and the sealed batch is leased"


# -- concurrency ---------------------------------------------------------------


def _parts(ch) -> int:
    return ch.query(
        "SELECT count() FROM system.parts"
        " WHERE table = %(t)s AND active AND database = currentDatabase()",
        t=event_log_settings().CLICKHOUSE_TABLE,
    )[0][0]


def test_four_relays_at_once_deliver_each_event_exactly_once_in_few_inserts(ch, settings):
    batch_size = 2_000
    settings.EVENT_LOG = {**settings.EVENT_LOG, "BATCH_SIZE": batch_size}
    published = publish_pings(20_000, chunk=2_000)
    ch.command(f"SYSTEM STOP MERGES {event_log_settings().CLICKHOUSE_TABLE}")
    reports = []
    errors = []

    def relay() -> None:
        try:
            reports.append(run_relay(time_budget=60))
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=relay) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert sum(r.delivered for r in reports) == 20_000
        assert sum(1 for r in reports if r.batches) >= 2, "relays ran side by side"
        assert_exactly_once(ch, published)
        # With merges stopped, each INSERT leaves one part (all events are in one month).
        assert _parts(ch) <= math.ceil(20_000 / batch_size) + 2
    finally:
        ch.command(f"SYSTEM START MERGES {event_log_settings().CLICKHOUSE_TABLE}")


def test_event_date_time_is_publish_time_to_the_microsecond(ch):
    with transaction.atomic():
        [event_id] = publish(Ping(n=1))
    published_at = OutboxEvent.objects.get(event_id=event_id).event_date_time
    assert datetime.now(UTC) >= published_at

    run_relay()

    [row] = ch.rows()
    assert row[2].replace(tzinfo=UTC) == published_at


def test_a_trickle_of_events_is_batched_by_time_not_sent_one_by_one(ch, settings):
    settings.EVENT_LOG = {**settings.EVENT_LOG, "MIN_INSERT_INTERVAL": 0.25}
    published: list[uuid.UUID] = []

    def trickle() -> None:
        try:
            for i in range(100):  # about 100 events/s for a second
                with transaction.atomic():
                    published.extend(publish(Ping(n=i)))
                time.sleep(0.01)
        finally:
            connection.close()

    producer = threading.Thread(target=trickle)
    started = time.monotonic()
    producer.start()
    relay = Relay()
    batches = 0
    while producer.is_alive():
        batches += relay.run(time_budget=0.5).batches
    producer.join()
    elapsed = time.monotonic() - started
    batches += relay.run().batches

    assert_exactly_once(ch, published)
    # One INSERT per 0.25 s at most (plus the first and the last): not one per event.
    assert batches <= elapsed / 0.25 + 2, (batches, elapsed)
    assert batches < len(published) / 5


def _count_engine_memory_releases(relay: Relay, *, refuse: bool = False) -> list[str]:
    """Record the relay's SYSTEM JEMALLOC PURGE commands on its real client."""
    client = relay.connect_clickhouse()
    command = client.command
    sent: list[str] = []

    def recording(statement: str, *args: object, **kwargs: object) -> object:
        if "JEMALLOC" in statement:
            sent.append(statement)
            if refuse:
                raise RuntimeError("Code: 344. SYSTEM JEMALLOC PURGE is not supported")
        return command(statement, *args, **kwargs)

    client.command = recording  # type: ignore[method-assign]
    return sent


@pytest.fixture
def embedded_ch(ch, clickhouse_url):
    if not clickhouse_url.startswith("chdb:"):
        pytest.skip("a ClickHouse server manages its own memory")
    return ch


@pytest.mark.parametrize(("interval", "releases"), [(0.0, 11), (3600.0, 1)])
def test_the_embedded_engine_gives_freed_memory_back_while_draining_and_after_the_run(
    embedded_ch, settings, monkeypatch, interval, releases
):
    settings.EVENT_LOG = {**settings.EVENT_LOG, "BATCH_SIZE": 100}
    monkeypatch.setattr("event_log.relay.loop.ENGINE_MEMORY_RELEASE_INTERVAL", interval)
    published = publish_pings(1_000)
    relay = Relay()
    sent = _count_engine_memory_releases(relay)

    report = relay.run()
    relay.close()

    assert report.drained
    assert_exactly_once(embedded_ch, published)
    # Ten batches: after each one when the interval allows it, and once at the end.
    assert len(sent) == releases


def test_an_engine_that_cannot_release_memory_is_asked_once_and_delivery_goes_on(embedded_ch):
    relay = Relay()
    sent = _count_engine_memory_releases(relay, refuse=True)
    first = publish_pings(10)
    assert relay.run().delivered == 10
    second = publish_pings(10)
    assert relay.run().delivered == 10
    relay.close()

    assert len(sent) == 1
    assert_exactly_once(embedded_ch, first + second)


def test_a_relay_never_asks_a_clickhouse_server_to_release_memory():
    assert not Relay(clickhouse_url="http://127.0.0.1:8123/default")._embedded_engine
    assert Relay(clickhouse_url="chdb:///var/lib/events")._embedded_engine
