"""Edits and replays of dead letters are audited: who, when, which event and fields,
digests of the text before and after, never the values."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from structlog.testing import capture_logs

from event_log.dead_letter_audit import context_change, digest
from event_log.models import DeadLetter, OutboxEvent

pytestmark = pytest.mark.django_db

BEFORE = '{"user_id":7,"email":"ada.lovelace@example.com","first_name":"Ada","n":1}'
AFTER = '{"user_id":7,"email":"ada.lovelace@example.org","first_name":"Ada","n":2}'


def _dead_letter(context: str = BEFORE) -> DeadLetter:
    return DeadLetter.objects.create(
        event_id=uuid.uuid4(),
        event_type="user_created",
        event_date_time=datetime.now(UTC),
        environment="test",
        event_context=context,
        error="Code: 469 (VIOLATED_CONSTRAINT)",
        batch_id=uuid.uuid4(),
    )


def test_an_edit_of_a_dead_letter_is_logged_with_field_names_and_digests_only(
    admin_client, admin_user
):
    letter = _dead_letter()

    with capture_logs() as logs:
        response = admin_client.post(
            f"/admin/event_log/deadletter/{letter.pk}/change/", {"event_context": AFTER}
        )

    assert response.status_code == 302
    [entry] = LogEntry.objects.filter(object_id=str(letter.pk))
    assert (entry.user_id, entry.action_flag) == (admin_user.pk, CHANGE)
    message = json.loads(entry.change_message)
    assert message == [
        {"changed": {"fields": ["event_context.email", "event_context.n"]}},
        {
            "event_context": {
                "fields": ["email", "n"],
                "before": digest(BEFORE),
                "after": digest(AFTER),
            }
        },
    ]
    [line] = [log for log in logs if log["event"] == "dead_letter_edited"]
    assert line["event_id"] == str(letter.event_id)
    assert line["user_id"] == admin_user.pk
    recorded = entry.change_message + json.dumps(logs, default=str)
    assert "ada.lovelace" not in recorded and "example." not in recorded


def test_a_replay_from_the_admin_is_logged_per_event_without_its_context(admin_client, admin_user):
    letters = [_dead_letter(), _dead_letter()]

    with capture_logs() as logs:
        response = admin_client.post(
            "/admin/event_log/deadletter/",
            {"action": "replay", "_selected_action": [letter.pk for letter in letters]},
        )

    assert response.status_code == 302
    assert {e.event_id for e in OutboxEvent.objects.all()} == {x.event_id for x in letters}
    entries = LogEntry.objects.filter(user=admin_user, action_flag=CHANGE)
    replayed = {json.loads(e.change_message)[0]["replayed"]["event_id"] for e in entries}
    assert replayed == {str(letter.event_id) for letter in letters}
    [line] = [log for log in logs if log["event"] == "dead_letters_replayed"]
    assert sorted(line["event_ids"]) == sorted(str(letter.event_id) for letter in letters)
    recorded = json.dumps([e.change_message for e in entries]) + json.dumps(logs, default=str)
    assert "ada.lovelace" not in recorded


def test_a_context_change_names_the_top_level_fields_that_differ():
    change = context_change(BEFORE, AFTER)

    assert change.fields == ["email", "n"]
    assert change.before != change.after
    assert context_change("not json", "{}").fields == ["(whole)"]
