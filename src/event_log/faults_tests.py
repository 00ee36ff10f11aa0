"""Fault injection: real processes, real kills, real PostgreSQL and ClickHouse engine.

Every scenario ends by comparing the full set of published event ids with the
full set in ClickHouse, and the lengths (a duplicate would make them differ).
"""

import json
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from structlog.testing import capture_logs

from conftest import (
    assert_exactly_once,
    fast_config,
    insert_poison_row,
    kill_relays_at_random,
    publish_pings,
    relay_process,
    tsv_line,
    unused_port,
    wait_until,
)
from event_log import clickhouse
from event_log.clickhouse import ClickHouseError
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent
from event_log.relay import Relay, run_relay

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

SRC = Path(__file__).resolve().parents[1]


# -- crashes -------------------------------------------------------------------


def test_relays_killed_at_random_moments_again_and_again_lose_and_duplicate_nothing(
    ch, process_env
):
    published = publish_pings(50_000)
    env = {
        "EVENT_LOG_BATCH_SIZE": "500",
        "EVENT_LOG_LEASE_SECONDS": "1",
        "EVENT_LOG_RELAY_INTERVAL": "0.2",
    }
    kills_mid_drain = kill_relays_at_random(process_env, env, seed=20261126, rounds=40)
    assert kills_mid_drain >= 3, "the kills should land while relays are draining"

    # Whatever the kills left behind: one last relay, after the leases ran out.
    time.sleep(1.1)
    run_relay(time_budget=120)

    assert OutboxEvent.objects.count() == 0
    assert OutboxBatch.objects.count() == 0
    assert_exactly_once(ch, published)


def test_relay_recovers_by_itself_when_its_postgresql_connection_is_killed_mid_batch(ch):
    published = publish_pings(3_000)
    reached = threading.Event()
    resume = threading.Event()
    backend: list[int] = []

    def checkpoint(step, batch):
        if step == "inserted" and not backend:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                backend.append(cur.fetchone()[0])
            reached.set()
            resume.wait(30)

    reports = []

    def relay() -> None:
        try:
            reports.append(Relay(config=fast_config(BATCH_SIZE=1_000), checkpoint=checkpoint).run())
        finally:
            connection.close()

    thread = threading.Thread(target=relay)
    thread.start()
    assert reached.wait(30)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", [backend[0]])
        assert cur.fetchone()[0] is True
    resume.set()
    thread.join(60)

    [report] = reports
    assert report.failures >= 1
    assert report.drained
    assert_exactly_once(ch, published)


# -- ClickHouse unavailable ----------------------------------------------------


def test_clickhouse_unreachable_keeps_the_batch_sealed_and_backs_off(ch):
    published = publish_pings(1_000)
    down = Relay(
        config=fast_config(BATCH_SIZE=400),
        clickhouse_url=f"http://relay:s3cret@127.0.0.1:{unused_port()}/default",
    )

    with capture_logs() as logs:
        report = down.run(time_budget=1.0)

    assert report.delivered == 0
    assert report.failures >= 3
    assert OutboxEvent.objects.count() == 1_000, "nothing dropped"
    assert OutboxBatch.objects.count() == 1, "the same batch is retried, no new ones sealed"
    failures = [log for log in logs if log["event"] == "outbox_batch_failed"]
    assert len(failures) == report.failures, "each failure is logged once"
    assert all(log["batch_id"] and log["rows"] == 400 and "retry_in_s" in log for log in failures)
    assert "s3cret" not in json.dumps(logs, default=str)

    time.sleep(0.25)  # the last back-off
    run_relay()

    assert OutboxEvent.objects.count() == 0
    assert_exactly_once(ch, published)


def test_api_keeps_answering_201_while_clickhouse_is_down_and_nothing_is_lost(
    ch, process_env, live_server, monkeypatch, tmp_path
):
    from users.use_cases import create_user

    published: list[uuid.UUID] = []
    real_publish = create_user.publish

    def recording_publish(*events):
        ids = real_publish(*events)
        published.extend(ids)
        return ids

    monkeypatch.setattr(create_user, "publish", recording_publish)
    statuses: list[int] = []

    def post_users(count: int, prefix: str) -> None:
        for i in range(count):
            body = json.dumps({"email": f"{prefix}{i}@example.com"}).encode()
            request = urllib.request.Request(
                f"{live_server.url}/api/users",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                statuses.append(response.status)
            time.sleep(0.005)

    env = {
        "EVENT_LOG_RELAY_INTERVAL": "0.1",
        "EVENT_LOG_BACKOFF_MAX": "0.5",
        "EVENT_LOG_LEASE_SECONDS": "2",
    }
    # Before: a healthy relay owns the embedded engine.
    with relay_process(process_env, env=env) as healthy:
        post_users(50, "before")
        wait_until(lambda: not OutboxEvent.objects.exists(), timeout=60)
        healthy.send_signal(signal.SIGKILL)  # the engine's owner dies: ClickHouse is gone
        healthy.wait(30)

    # During: the relay can only reach a closed port; the API must not notice.
    down_log = tmp_path / "down.log"
    outage_env = {**env, "CLICKHOUSE_URL": f"http://127.0.0.1:{unused_port()}/default"}
    with down_log.open("wb") as log, relay_process(process_env, env=outage_env, log=log) as down:
        post_users(150, "during")
        assert OutboxEvent.objects.count() >= 150
        wait_until(lambda: "outbox_batch_failed" in down_log.read_text(), timeout=60)
        down.send_signal(signal.SIGTERM)
        assert down.wait(30) == 0, "a relay stops cleanly on SIGTERM"

    # After: ClickHouse is back; the backlog drains.
    with relay_process(process_env, env=env) as healthy:
        post_users(50, "after")
        wait_until(lambda: not OutboxEvent.objects.exists(), timeout=90)
        healthy.send_signal(signal.SIGTERM)
        healthy.wait(30)

    assert statuses == [201] * 250
    assert len(published) == 250
    assert_exactly_once(ch, published)


# -- poison events -------------------------------------------------------------


def test_one_poison_row_in_a_batch_of_1000_is_dead_lettered_and_999_delivered(ch):
    published = publish_pings(500)
    poison = insert_poison_row()
    published += publish_pings(499)

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()

    assert (report.batches, report.delivered, report.dead_lettered) == (1, 999, 1)
    assert_exactly_once(ch, published)
    letter = DeadLetter.objects.get()
    assert letter.event_id == poison
    assert letter.error_code == 469  # VIOLATED_CONSTRAINT
    assert "event_context_is_json" in letter.error
    assert OutboxEvent.objects.count() == 0

    # Staff fix the context and replay it: delivered once, with its original id.
    letter.event_context = '{"n": 1}'
    letter.save()
    call_command("event_log_dead_letters", "replay", "--all")
    run_relay()

    assert DeadLetter.objects.count() == 0
    assert_exactly_once(ch, [*published, poison])


def test_poison_bisection_after_a_crash_resends_the_same_sub_batches(ch):
    """A relay that bisected, inserted some halves, then died: the retry deduplicates."""
    published = publish_pings(300)
    insert_poison_row()
    published += publish_pings(300)

    class Crash(Exception):
        pass

    def die_after_insert(step, batch):
        if step == "inserted":
            raise Crash

    with pytest.raises(Crash):
        Relay(
            config=fast_config(BATCH_SIZE=1_000, LEASE_SECONDS=1), checkpoint=die_after_insert
        ).run()
    assert len(ch.event_ids()) == 600, "the good halves were inserted before the crash"
    time.sleep(1.1)

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()

    assert report.dead_lettered == 1
    assert_exactly_once(ch, published)


def test_transient_and_data_errors_are_told_apart_in_one_place():
    assert ClickHouseError("Code: 252. Too many parts", code=252).transient
    assert ClickHouseError("Connection refused").transient
    assert ClickHouseError("Code: 60. Unknown table", code=60).transient
    assert not ClickHouseError("Code: 469. Constraint", code=469).transient
    assert not ClickHouseError("Code: 27. Cannot parse", code=27).transient
    assert ClickHouseError.from_exception(RuntimeError("Code: 241. Memory limit")).code == 241


# -- leases --------------------------------------------------------------------


def test_two_relays_racing_on_expired_leases_deliver_each_event_once(ch):
    published = publish_pings(10_000)
    sealer = Relay(config=fast_config(BATCH_SIZE=500))
    while sealer.claim() is not None:
        pass  # seal everything, deliver nothing: as if 20 relays had died
    OutboxBatch.objects.update(lease_until=time_ago(1))
    assert OutboxBatch.objects.count() == 20

    reports = []

    def relay() -> None:
        try:
            reports.append(Relay(config=fast_config(BATCH_SIZE=500)).run())
        finally:
            connection.close()

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert sum(r.batches for r in reports) == 20
    assert_exactly_once(ch, published)


def test_a_slow_relay_that_outlives_its_lease_is_fenced_out_and_causes_no_duplicate(ch):
    published = publish_pings(800)
    taken_over = threading.Event()

    def slow(step, batch):
        if step == "sealed" and batch.attempts == 1:
            time.sleep(1.2)  # past its 0.5 s lease
            assert taken_over.wait(30)

    reports = {}

    def slow_relay() -> None:
        try:
            reports["slow"] = Relay(
                config=fast_config(BATCH_SIZE=1_000, LEASE_SECONDS=0.5), checkpoint=slow
            ).run(max_batches=1)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_relay)
    thread.start()
    time.sleep(0.8)
    reports["fast"] = Relay(config=fast_config(BATCH_SIZE=1_000)).run()
    taken_over.set()
    thread.join(60)

    assert reports["fast"].delivered == 800, "the expired batch was taken over"
    assert reports["slow"].batches == 0, "the slow relay sent nothing once fenced out"
    assert reports["slow"].leases_lost == 1
    assert_exactly_once(ch, published)


def time_ago(seconds: float):
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(seconds=seconds)


# -- bad configuration ---------------------------------------------------------


def test_relay_start_up_with_unreachable_clickhouse_says_so_in_one_line(manage):
    url = f"http://relay:s3cret@127.0.0.1:{unused_port()}/default"

    result = manage("relay_events", "--once", env={"CLICKHOUSE_URL": url})

    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot reach ClickHouse at http://relay:***@127.0.0.1" in last
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_status_reports_unreachable_clickhouse_with_the_password_masked(manage):
    url = f"http://relay:s3cret@127.0.0.1:{unused_port()}/default"

    result = manage("event_log_status", "--json", env={"CLICKHOUSE_URL": url})

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["clickhouse"]["reachable"] is False
    assert status["clickhouse"]["url"].startswith("http://relay:***@127.0.0.1")
    assert "s3cret" not in result.stdout + result.stderr


def test_api_never_touches_clickhouse(client, settings, db):
    settings.CLICKHOUSE_URL = f"http://127.0.0.1:{unused_port()}/default"

    response = client.post(
        "/api/users", data={"email": "ada@example.com"}, content_type="application/json"
    )

    assert response.status_code == 201
    assert OutboxEvent.objects.count() == 1


def test_a_resent_batch_whose_token_clickhouse_kept_without_its_rows_is_completed(ch):
    """What an engine that died mid-INSERT can leave: the token remembered, rows gone."""
    published = publish_pings(300)
    batch = Relay(config=fast_config(BATCH_SIZE=1_000)).claim()
    assert batch is not None
    with clickhouse.client(ch.url) as client:
        # Same partition (month) as the batch: ClickHouse keys the token by partition.
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        stray = tsv_line(uuid.uuid4(), "stray", now, batch_id=batch.id)
        clickhouse.insert_tsv(client, table=ch.table, block=stray, token=str(batch.id))
        client.command(f"DELETE FROM {ch.table} WHERE event_type = 'stray'")
    OutboxBatch.objects.update(lease_until=time_ago(1))

    with capture_logs() as logs:
        report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()

    assert report.delivered == 300
    assert any(log["event"] == "outbox_batch_rows_missing" for log in logs)
    assert_exactly_once(ch, published)
