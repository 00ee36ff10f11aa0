"""Operator commands: relay_events --once and event_log_dead_letters, run as operators run them."""

import builtins
import io
import json
import sys

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from conftest import assert_exactly_once, publish_pings, unused_port
from event_log.conf import event_log_settings
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent
from event_log.relay import Relay

pytestmark = pytest.mark.django_db(transaction=True)


def refusing_clickhouse() -> str:
    return f"http://relay:s3cret@127.0.0.1:{unused_port()}/x"


# -- relay_events --once -------------------------------------------------------


def test_relay_once_exits_0_when_it_leaves_the_outbox_empty(ch, manage):
    published = publish_pings(7)

    result = manage("relay_events", "--once")

    assert result.returncode == 0, result.stderr
    assert "delivered 7 events" in result.stdout
    assert "left in the outbox" not in result.stderr
    assert_exactly_once(ch, published)


def test_relay_once_with_a_batch_backing_off_says_what_is_left_and_exits_3(ch, manage):
    published = publish_pings(10)
    patient = event_log_settings(BACKOFF_INITIAL=600, BACKOFF_MAX=600)
    failed = Relay(config=patient, clickhouse_url=refusing_clickhouse()).run(time_budget=1.0)
    assert failed.failures == 1
    batch = OutboxBatch.objects.get()

    result = manage("relay_events", "--once")

    assert result.returncode == 3, result.stdout + result.stderr
    assert "delivered 0 events" in result.stdout
    assert "left in the outbox: 10 events" in result.stderr
    described = next(line for line in result.stderr.splitlines() if str(batch.id) in line)
    assert "backing off until" in described
    assert "last error: " in described
    assert "refused" in described.lower()
    assert "s3cret" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "CommandError: events are left in the outbox"
    assert set(OutboxEvent.objects.values_list("event_id", flat=True)) == set(published)
    assert ch.event_ids() == []


def test_relay_once_against_a_refusing_clickhouse_says_what_is_left_and_exits_1(manage):
    publish_pings(5)

    result = manage("relay_events", "--once", env={"CLICKHOUSE_URL": refusing_clickhouse()})

    assert result.returncode == 1
    assert "left in the outbox: 5 events" in result.stderr
    assert "cannot reach ClickHouse at http://relay:***@127.0.0.1" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert OutboxEvent.objects.count() == 5


# -- event_log_dead_letters ----------------------------------------------------


def dead_letter(*, event_date_time: str = "now()", dead_lettered_at: str = "now()") -> int:
    """A dead letter with the given SQL timestamps (any PostgreSQL holds); returns its id."""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO event_log_dead_letter (event_id, event_type, event_date_time, "
            "environment, event_context, metadata_version, error, error_code, attempts, "
            "batch_id, dead_lettered_at) VALUES (gen_random_uuid(), 'ping', "
            f"{event_date_time}, 'test', '{{}}', 1, 'DateTime64 out of range', 321, 1, "
            f"gen_random_uuid(), {dead_lettered_at}) RETURNING id"
        )
        return int(cur.fetchone()[0])


def run_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("event_log_dead_letters", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_dead_letters_list_shows_those_dated_at_infinity_or_after_year_9999():
    far = dead_letter(event_date_time="'10000-01-01 00:00:00+00'")
    forever = dead_letter(event_date_time="'infinity'", dead_lettered_at="'infinity'")
    normal = dead_letter(event_date_time="'2026-11-30 04:15:19.5+00'")

    out, _ = run_command("list", "--json")
    listed = {row["id"]: row for row in map(json.loads, out.splitlines())}

    assert set(listed) == {far, forever, normal}
    assert listed[far]["event_date_time"] == "10000-01-01T00:00:00+00:00"
    assert listed[forever]["event_date_time"] == "infinity"
    assert listed[forever]["dead_lettered_at"] == "infinity"
    assert listed[normal]["event_date_time"] == "2026-11-30T04:15:19.5+00:00"
    text, _ = run_command("list")
    assert "10000-01-01T00:00:00+00:00" in text
    assert "infinity" in text


def test_dead_letters_list_says_so_when_there_are_none():
    assert run_command("list") == ("no dead letters\n", "")
    assert run_command("list", "--json") == ("", "no dead letters\n")


def test_admin_lists_and_opens_a_dead_letter_dated_at_infinity(admin_client):
    forever = dead_letter(event_date_time="'infinity'", dead_lettered_at="'infinity'")

    listing = admin_client.get("/admin/event_log/deadletter/")
    page = admin_client.get(f"/admin/event_log/deadletter/{forever}/change/")

    assert listing.status_code == 200
    assert f"/admin/event_log/deadletter/{forever}/change/" in listing.content.decode()
    assert page.status_code == 200
    assert "infinity" in page.content.decode()


def test_purge_dry_run_prints_what_would_go_and_deletes_nothing():
    old = dead_letter(dead_lettered_at="now() - interval '40 days'")
    forever = dead_letter(event_date_time="'infinity'", dead_lettered_at="'-infinity'")
    recent = dead_letter()

    out, _ = run_command("purge", "--older-than-days", "30", "--dry-run")

    listed = {int(line.split()[0]) for line in out.splitlines()[:-1]}
    assert listed == {old, forever}
    assert out.splitlines()[-1] == "would purge 2 dead letters (dry run: nothing deleted)"
    assert set(DeadLetter.objects.values_list("id", flat=True)) == {old, forever, recent}


def test_purge_without_a_terminal_needs_yes_and_deletes_nothing_without_it(monkeypatch):
    ids = {dead_letter(), dead_letter()}
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    with pytest.raises(CommandError, match="pass --yes"):
        run_command("purge", "--all")
    assert set(DeadLetter.objects.values_list("id", flat=True)) == ids

    out, _ = run_command("purge", "--all", "--yes")
    assert out == "purged 2 dead letters\n"
    assert not DeadLetter.objects.exists()


@pytest.mark.parametrize(("answer", "left"), [("no", 1), ("", 1), ("yes", 0)])
def test_purge_on_a_terminal_asks_and_deletes_only_on_yes(monkeypatch, answer, left):
    dead_letter()
    prompts: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(builtins, "input", lambda prompt: prompts.append(prompt) or answer)

    run_command("purge", "--all")

    assert prompts == ["Delete 1 dead letters for good? Type 'yes' to confirm: "]
    assert DeadLetter.objects.count() == left


@pytest.mark.parametrize("days", ["-1", "nan", "1e12"])
def test_purge_refuses_an_age_that_is_not_a_number_of_days_ago(days):
    dead_letter()

    with pytest.raises(CommandError, match="--older-than-days"):
        run_command("purge", f"--older-than-days={days}", "--yes")

    assert DeadLetter.objects.count() == 1


def test_admin_lists_and_opens_an_outbox_event_dated_at_infinity(admin_client):
    (event_id,) = publish_pings(1)
    with connection.cursor() as cur:
        cur.execute("UPDATE event_log_outbox SET event_date_time = 'infinity'")
    pk = OutboxEvent.objects.values_list("pk", flat=True).get(event_id=event_id)

    listing = admin_client.get("/admin/event_log/outboxevent/")
    page = admin_client.get(f"/admin/event_log/outboxevent/{pk}/change/")

    assert listing.status_code == 200
    assert str(event_id) in listing.content.decode()
    assert page.status_code == 200
    assert "infinity" in page.content.decode()
