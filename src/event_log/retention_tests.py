"""Retention: the ClickHouse TTL follows EVENT_LOG_RETENTION_DAYS; old dead letters go."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from event_log import clickhouse
from event_log.models import DeadLetter
from event_log.retention import apply_retention, current_ttl, purge_old_dead_letters
from event_log.tasks import purge_old_dead_letters as purge_task


def _ttl(ch) -> str | None:
    with clickhouse.client(ch.url) as client:
        return current_ttl(client, database=client.database or "default", table=ch.table)


def _set_retention(ch, days: int) -> bool:
    with clickhouse.client(ch.url) as client:
        return apply_retention(
            client, database=client.database or "default", table=ch.table, days=days
        )


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
    assert status["retention"] == {"event_log_days": 0, "dead_letter_days": 30}
    assert status["clickhouse"]["ttl"] is None
