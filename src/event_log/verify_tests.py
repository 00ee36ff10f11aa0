"""event_log_verify: the delivery records PostgreSQL keeps, and what the verifier finds
in ClickHouse — duplicates and gaps injected on purpose, nothing after a crash storm."""

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import (
    assert_exactly_once,
    fast_config,
    insert_poison_row,
    kill_relays_at_random,
    publish_pings,
)
from event_log.models import DeadLetter, Delivery, Verification
from event_log.relay import Relay, run_relay
from event_log.relay.fence import LeaseLostError
from event_log.tasks import verify_deliveries_task
from event_log.verify import parse_since, purge_old_records, verify_deliveries

pytestmark = pytest.mark.django_db(transaction=True)

SRC = Path(__file__).resolve().parents[1]
REPO = SRC.parent
EXIT_FINDINGS = 3


def recorded_ids() -> list[uuid.UUID]:
    return [event_id for d in Delivery.objects.all() for event_id in d.event_ids]


def duplicate_in_clickhouse(ch, event_id: uuid.UUID) -> None:
    """A second copy of a delivered row, as a broken writer could leave."""
    ch.command(
        f"INSERT INTO {ch.table} SETTINGS insert_deduplicate = 0 "
        f"SELECT * FROM {ch.table} WHERE event_id = '{event_id}'"
    )


def delete_from_clickhouse(ch, event_id: uuid.UUID) -> None:
    ch.command(f"DELETE FROM {ch.table} WHERE event_id = '{event_id}'")


# -- the delivery records ----------------------------------------------------


def test_each_delivered_batch_records_its_event_ids_and_dead_letters_are_not_recorded(ch):
    published = publish_pings(1_200)
    poison = insert_poison_row()

    report = run_relay(relay=Relay(config=fast_config(BATCH_SIZE=500)))

    assert (report.batches, report.dead_lettered) == (3, 1)
    assert DeadLetter.objects.get().event_id == poison
    records = list(Delivery.objects.order_by("delivered_at"))
    assert [r.rows for r in records] == [500, 500, 200]
    assert [len(r.event_ids) for r in records] == [r.rows for r in records]
    ids = recorded_ids()
    assert set(ids) == set(published)
    assert len(ids) == len(published)
    assert all(r.first_event_at <= r.last_event_at for r in records)


def test_a_relay_that_outlived_its_lease_and_finishes_second_records_nothing(ch):
    published = publish_pings(300)
    relay = Relay(config=fast_config(BATCH_SIZE=1_000))
    batch = relay.claim()
    assert batch is not None
    delivery = relay.write(batch)
    relay.finish(batch, delivery)
    with pytest.raises(LeaseLostError):
        relay.finish(batch, delivery)  # the late one: it no longer holds the batch

    [record] = Delivery.objects.all()
    assert sorted(record.event_ids) == sorted(published)
    relay.close()


def test_delivery_records_and_verifications_past_the_retention_are_purged(db):
    now = datetime.now(UTC)
    for age in (timedelta(days=8), timedelta(hours=1)):
        Delivery.objects.create(
            batch_id=uuid.uuid4(),
            delivered_at=now - age,
            event_ids=[uuid.uuid4()],
            rows=1,
            first_event_at=now - age,
            last_event_at=now - age,
        )
        Verification.objects.create(
            verified_at=now - age,
            since=now,
            until=now,
            batches=0,
            events=0,
            duplicated=0,
            missing=0,
        )

    purged = purge_old_records(retention=7 * 86400)

    assert purged == 2
    assert [d.delivered_at for d in Delivery.objects.all()] == [now - timedelta(hours=1)]
    assert Verification.objects.count() == 1


# -- what the verifier finds ---------------------------------------------------


def test_verify_is_clean_and_exits_0_after_a_clean_delivery(ch, manage):
    published = publish_pings(500)
    run_relay()

    result = manage("event_log_verify", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["clean"] is True
    assert (report["events"], report["duplicated"], report["missing"]) == (500, {}, [])
    assert_exactly_once(ch, published)


def test_verify_reports_a_duplicate_and_a_gap_injected_into_clickhouse_by_their_ids(ch, manage):
    published = publish_pings(500)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=200)))
    duplicated, deleted = published[17], published[333]
    duplicate_in_clickhouse(ch, duplicated)
    delete_from_clickhouse(ch, deleted)

    result = manage("event_log_verify", "--json", "--since", "10m")

    assert result.returncode == EXIT_FINDINGS, result.stderr
    report = json.loads(result.stdout)
    assert report["clean"] is False
    assert report["events"] == 500
    assert report["batches"] == 3
    assert report["duplicated"] == {str(duplicated): 2}
    assert report["missing"] == [str(deleted)]
    verification = Verification.objects.get()
    assert (verification.duplicated, verification.missing) == (1, 1)
    assert verification.findings == {
        "duplicated": [str(duplicated)],
        "missing": [str(deleted)],
        "altered": [],
        "extra": [],
        "chain": [],
    }


def test_verify_prints_each_finding_on_its_own_line(ch, capsys):
    published = publish_pings(50)
    run_relay()
    duplicate_in_clickhouse(ch, published[3])
    delete_from_clickhouse(ch, published[4])

    with pytest.raises(SystemExit) as exited:
        call_command("event_log_verify")

    assert exited.value.code == EXIT_FINDINGS
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(": 1 duplicated, 1 missing")
    assert lines[0].startswith("50 events in 1 batches delivered from ")
    assert lines[1].startswith("batch chain: 1 entries checked, head at position 1 (")
    assert lines[1].endswith("): 0 altered, 0 extra, 0 breaks, 0 batches expired")
    [batch_id] = Delivery.objects.values_list("batch_id", flat=True)
    assert lines[2:] == [
        f"duplicated {published[3]} (2 copies)",
        f"missing {published[4]} (batch {batch_id})",
    ]


def test_verify_finds_a_duplicate_among_events_no_delivery_record_covers(ch):
    """Events delivered before the records were kept (or past their retention)."""
    published = publish_pings(100)
    run_relay()
    Delivery.objects.all().delete()
    duplicate_in_clickhouse(ch, published[42])

    report = verify_deliveries(since=datetime.now(UTC) - timedelta(hours=1))

    assert report.events == 0
    assert report.duplicated == {published[42]: 2}
    assert report.missing == set()


def test_verify_looks_at_events_of_the_window_to_the_microsecond(ch):
    [event_id] = publish_pings(1)
    run_relay()
    Delivery.objects.all().delete()  # only the window's event times decide
    duplicate_in_clickhouse(ch, event_id)
    [(happened_at,)] = ch.query(
        f"SELECT DISTINCT event_date_time FROM {ch.table} WHERE event_id = %(id)s", id=event_id
    )
    happened_at = happened_at.replace(tzinfo=UTC)
    assert happened_at.microsecond, "an event time with a fraction of a second"

    inside = verify_deliveries(since=happened_at, until=happened_at + timedelta(microseconds=1))
    after = verify_deliveries(since=happened_at + timedelta(microseconds=1))

    assert inside.duplicated == {event_id: 2}
    assert after.duplicated == {}


@pytest.mark.faults
def test_verify_finds_nothing_after_relays_killed_at_random_moments(ch, process_env, manage):
    published = publish_pings(12_000)
    env = {
        "EVENT_LOG_BATCH_SIZE": "100",
        "EVENT_LOG_LEASE_SECONDS": "1",
        "EVENT_LOG_RELAY_INTERVAL": "0.2",
    }
    kills_mid_drain = kill_relays_at_random(
        process_env, env, seed=20261130, rounds=30, longest_life=0.3, enough=5
    )
    assert kills_mid_drain >= 3, "the kills should land while relays are draining"
    time.sleep(1.1)
    run_relay(time_budget=120)
    assert_exactly_once(ch, published)

    result = manage("event_log_verify", "--json", "--since", "1h")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["clean"] is True
    assert report["events"] == len(published), "every delivered id was recorded once"
    ids = recorded_ids()
    assert set(ids) == set(published)
    assert len(ids) == len(published)


def test_verify_reads_a_clickhouse_server_over_http(clickhouse_http):
    published = publish_pings(400)
    relay = Relay(config=fast_config(BATCH_SIZE=150), clickhouse_url=clickhouse_http.url)
    relay.run()
    relay.close()
    duplicate_in_clickhouse(clickhouse_http.probe, published[0])
    delete_from_clickhouse(clickhouse_http.probe, published[399])

    report = verify_deliveries(
        since=datetime.now(UTC) - timedelta(minutes=5), url=clickhouse_http.url
    )

    assert (report.batches, report.events) == (3, 400)
    assert report.duplicated == {published[0]: 2}
    assert report.missing == {published[399]}


def test_verify_with_clickhouse_unreachable_exits_1_with_the_password_masked(manage):
    url = "http://relay:s3cret@127.0.0.1:9/default"

    result = manage("event_log_verify", env={"CLICKHOUSE_URL": url})

    assert result.returncode == 1
    assert "cannot read ClickHouse at http://relay:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_verify_refuses_a_since_it_cannot_read(db):
    with pytest.raises(CommandError, match="neither a duration"):
        call_command("event_log_verify", "--since", "yesterday-ish")


def test_since_is_a_duration_ago_or_an_iso_time():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    assert parse_since("90s", now=now) == now - timedelta(seconds=90)
    assert parse_since("15m", now=now) == now - timedelta(minutes=15)
    assert parse_since("2h", now=now) == now - timedelta(hours=2)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("2026-11-29T10:00:00", now=now) == datetime(2026, 11, 29, 10, tzinfo=UTC)
    assert parse_since("2026-11-29T10:00:00+01:00", now=now) == datetime(
        2026, 11, 29, 9, tzinfo=UTC
    )


# -- the scheduled task, the metric and the alert ------------------------------


def test_the_verify_task_logs_its_failure_and_the_metric_shows_it(ch, client):
    published = publish_pings(100)
    run_relay()

    with capture_logs() as logs:
        result = verify_deliveries_task(window_seconds=3600)
    assert result["clean"] is True
    assert any(log["event"] == "event_log_verify_passed" for log in logs)
    assert _metrics(client)["event_log_verify_failures"] == 0

    delete_from_clickhouse(ch, published[7])
    with capture_logs() as logs:
        result = verify_deliveries_task(window_seconds=3600)

    assert (result["clean"], result["missing"]) == (False, 1)
    [failed] = [log for log in logs if log["event"] == "event_log_verify_failed"]
    assert failed["missing_ids"] == [str(published[7])]
    assert failed["log_level"] == "error"
    metrics = _metrics(client)
    assert metrics["event_log_verify_failures"] == 1
    assert metrics["event_log_verify_last_run_timestamp_seconds"] > 0


def test_the_verify_task_is_in_the_beat_schedule(settings):
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if "verify" in e["task"]]

    assert [e["task"] for e in entries] == ["event_log.tasks.verify_deliveries"]


def test_the_alert_rules_watch_metrics_that_metrics_exposes(db, client):
    rules = (REPO / "docker" / "prometheus" / "rules" / "verify.yml").read_text()
    watched = set(re.findall(r"expr: .*?\b(event_log_\w+)", rules))

    assert watched == {
        "event_log_verify_failures",
        "event_log_verify_chain_breaks",
        "event_log_verify_last_run_timestamp_seconds",
    }
    assert watched <= set(_metrics(client))


def _metrics(client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
