"""Retention: the ClickHouse TTL follows EVENT_LOG_RETENTION_DAYS and the event types'
own retention from the catalogue; old dead letters go."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from event_log import clickhouse
from event_log.events import SubjectErased
from event_log.models import DeadLetter
from event_log.retention import apply_retention, current_ttl, purge_old_dead_letters
from event_log.tasks import purge_old_dead_letters as purge_task
from users.events import UserCreated


def _ttl(ch) -> str | None:
    with clickhouse.client(ch.url) as client:
        return current_ttl(client, database=client.database or "default", table=ch.table)


def _set_retention(ch, days: int, overrides: dict[str, int] | None = None) -> bool:
    with clickhouse.client(ch.url) as client:
        return bool(
            apply_retention(
                client,
                database=client.database or "default",
                table=ch.table,
                days=days,
                overrides={} if overrides is None else overrides,
            )
        )


def _engine_full(ch) -> str:
    return ch.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND name = %(table)s",
        table=ch.table,
    )[0][0]


def _insert(ch, rows: list[tuple[uuid.UUID, str, datetime]]) -> None:
    """``rows`` in one INSERT, so in one part per month: types mixed, as the relay sends them."""
    values = ", ".join(
        f"('{event_id}', '{event_type}', '{when:%Y-%m-%d %H:%M:%S}', 'test', '{{}}', 1)"
        for event_id, event_type, when in rows
    )
    ch.command(
        f"INSERT INTO {ch.table} (event_id, event_type, event_date_time, environment, "
        f"event_context, metadata_version) VALUES {values}"
    )


@pytest.fixture
def per_type_retention(ch, settings, monkeypatch):
    """user_created kept 30 days, subject_erased for ever, every other type 90 days;
    the table's retention put back as the session had it afterwards."""
    settings.EVENT_LOG = {**settings.EVENT_LOG, "RETENTION_DAYS": 90}
    monkeypatch.setattr(UserCreated, "retention_days", 30)
    monkeypatch.setattr(SubjectErased, "retention_days", 0)
    yield
    monkeypatch.undo()
    _set_retention(ch, 0)


def test_the_retention_setting_becomes_the_table_ttl_and_0_removes_it(ch):
    try:
        assert _set_retention(ch, 30) is True
        assert "toIntervalDay(30)" in _ttl(ch)
        assert _set_retention(ch, 30) is False, "already so: nothing to do"
        assert _set_retention(ch, 400) is True
        assert "toIntervalDay(400)" in _ttl(ch)
    finally:
        assert _set_retention(ch, 0) is True
    assert _ttl(ch) is None


def test_events_older_than_the_retention_are_dropped_and_recent_ones_kept(ch):
    old, recent = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    with clickhouse.client(ch.url) as client:
        for event_id, when in ((old, now - timedelta(days=120)), (recent, now)):
            client.command(
                f"INSERT INTO {ch.table} (event_id, event_type, event_date_time, environment, "
                "event_context, metadata_version) VALUES "
                f"('{event_id}', 'ping', '{when:%Y-%m-%d %H:%M:%S}', 'test', '{{}}', 1)"
            )
    try:
        _set_retention(ch, 90)
        ch.command(f"OPTIMIZE TABLE {ch.table} FINAL")
        assert ch.event_ids() == [recent]
    finally:
        _set_retention(ch, 0)


def test_the_table_ttl_is_what_the_catalogue_says_and_rows_go_one_by_one(ch, per_type_retention):
    call_command("clickhouse_migrate", verbosity=0)

    assert _ttl(ch) == (
        "toDateTime(event_date_time) + toIntervalDay(30) WHERE event_type IN ('user_created'), "
        "toDateTime(event_date_time) + toIntervalDay(90) "
        "WHERE event_type NOT IN ('subject_erased', 'user_created')"
    )
    # Every part mixes types: dropping only whole parts would keep a month's
    # user_created rows as long as its subject_erased rows, for ever.
    assert "ttl_only_drop_parts = 0" in _engine_full(ch)


def test_rows_of_a_type_past_its_own_retention_go_and_other_types_of_that_age_stay(
    ch, per_type_retention
):
    now = datetime.now(UTC)
    rows = {
        "user_created, 45 days": ("user_created", now - timedelta(days=45)),
        "user_created, today": ("user_created", now),
        "ping, 45 days": ("ping", now - timedelta(days=45)),
        "ping, 120 days": ("ping", now - timedelta(days=120)),
        "subject_erased, 45 days": ("subject_erased", now - timedelta(days=45)),
        "subject_erased, 4000 days": ("subject_erased", now - timedelta(days=4000)),
    }
    ids = {name: uuid.uuid4() for name in rows}
    _insert(ch, [(ids[name], event_type, when) for name, (event_type, when) in rows.items()])
    call_command("clickhouse_migrate", verbosity=0)

    ch.command(f"OPTIMIZE TABLE {ch.table} FINAL")

    expired = {"user_created, 45 days", "ping, 120 days"}
    assert set(ch.event_ids()) == {ids[name] for name in rows if name not in expired}


def test_changing_an_event_type_s_retention_changes_the_ttl_at_the_next_migrate(
    ch, per_type_retention, monkeypatch
):
    call_command("clickhouse_migrate", verbosity=0)
    assert "toIntervalDay(30) WHERE event_type IN ('user_created')" in _ttl(ch)

    monkeypatch.setattr(UserCreated, "retention_days", 7)
    call_command("clickhouse_migrate", verbosity=0)
    assert "toIntervalDay(7) WHERE event_type IN ('user_created')" in _ttl(ch)

    # Back to the table's retention for every type: one TTL, parts dropped whole again.
    monkeypatch.setattr(UserCreated, "retention_days", None)
    monkeypatch.setattr(SubjectErased, "retention_days", None)
    call_command("clickhouse_migrate", verbosity=0)
    assert _ttl(ch) == "toDateTime(event_date_time) + toIntervalDay(90)"
    assert "ttl_only_drop_parts = 1" in _engine_full(ch)


def _dead_letter(age: timedelta) -> int:
    letter = DeadLetter.objects.create(
        event_id=uuid.uuid4(),
        event_type="ping",
        event_date_time=datetime.now(UTC),
        environment="test",
        event_context="{}",
        error="x",
        batch_id=uuid.uuid4(),
    )
    DeadLetter.objects.filter(pk=letter.pk).update(dead_lettered_at=datetime.now(UTC) - age)
    return letter.pk


@pytest.mark.django_db
def test_dead_letters_older_than_their_retention_are_purged_by_the_daily_task(settings):
    settings.EVENT_LOG = {**settings.EVENT_LOG, "DEAD_LETTER_RETENTION_DAYS": 30}
    old = _dead_letter(timedelta(days=31))
    young = _dead_letter(timedelta(days=29))

    assert purge_task() == 1

    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [young]
    assert old != young


@pytest.mark.django_db
def test_a_dead_letter_retention_of_0_keeps_every_dead_letter():
    kept = _dead_letter(timedelta(days=10_000))

    assert purge_old_dead_letters(days=0) == 0

    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [kept]


def test_the_daily_purge_is_scheduled(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["purge-old-dead-letters"]
    assert entry["task"] == purge_task.name


@pytest.mark.django_db
def test_status_shows_the_retention_and_the_table_ttl(ch, settings, capsys):
    settings.EVENT_LOG = {**settings.EVENT_LOG, "RETENTION_DAYS": 0}

    call_command("event_log_status", "--json")

    status = json.loads(capsys.readouterr().out)
    assert status["retention"] == {
        "event_log_days": 0,
        "event_type_days": {},
        "dead_letter_days": 30,
    }
    assert status["clickhouse"]["ttl"] is None


@pytest.mark.django_db
def test_status_shows_the_event_types_own_retention_and_the_rules_on_the_table(
    ch, per_type_retention, capsys
):
    call_command("clickhouse_migrate", verbosity=0)
    capsys.readouterr()

    call_command("event_log_status", "--json")

    status = json.loads(capsys.readouterr().out)
    assert status["retention"] == {
        "event_log_days": 90,
        "event_type_days": {"subject_erased": 0, "user_created": 30},
        "dead_letter_days": 30,
    }
    assert "WHERE event_type IN ('user_created')" in status["clickhouse"]["ttl"]
