"""Searching the event log: the investigator's three questions against the real engine
(what happened to user 42, what did request R do, what did actor A do between t1 and
t2), bad input, the logged search, and the admin's "Event log" page."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from structlog.testing import capture_logs

from event_log import clickhouse, sql
from event_log.envelope import Actor, acting_as
from event_log.models import OutboxEvent
from event_log.relay import run_relay
from event_log.search import (
    Ref,
    SearchInputError,
    parse_filters,
    parse_time,
    search_events,
    search_statement,
)
from users.models import User
from users.use_cases import CreateUser, CreateUserRequest

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def insert_events(ch: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Insert rows straight into the test's event table; ``{name: event_id}``."""
    ids = {}
    data = []
    for row in rows:
        event_id = uuid.uuid4()
        ids[row["name"]] = str(event_id)
        actor_type, _, actor_id = row.get("actor", "").partition(":")
        subject_type, _, subject_id = row.get("subject", "").partition(":")
        values = {
            "event_id": event_id,
            "event_type": row.get("type", "user_created"),
            "event_date_time": row["at"],
            "environment": "test",
            "event_context": json.dumps(row.get("context", {"note": row["name"]})),
            "metadata_version": 1,
            "actor_type": actor_type,
            "actor_id": actor_id,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "request_id": row.get("request", ""),
            "traceparent": "",
        }
        data.append([values[name] for name in sql.CLICKHOUSE_COLUMNS])
    with clickhouse.client(ch.url) as client:
        client.insert(ch.table, data, column_names=list(sql.CLICKHOUSE_COLUMNS))
    return ids


@pytest.fixture
def story(ch: Any) -> dict[str, str]:
    """Events of several users, requests and actors, with near misses for each filter."""
    hours = timedelta(hours=1)
    return insert_events(
        ch,
        [
            {"name": "42 created", "at": NOW - 5 * hours, "subject": "user:42",
             "actor": "user:7", "request": "req-1"},
            {"name": "43 created", "at": NOW - 4 * hours, "subject": "user:43",
             "actor": "user:7", "request": "req-1"},
            {"name": "42 erased", "at": NOW - 3 * hours, "type": "subject_erased",
             "subject": "user:42", "actor": "command:event_log_erase"},
            {"name": "44 created", "at": NOW - 2 * hours, "subject": "user:44",
             "actor": "user:7", "request": "req-2"},
            {"name": "420 created", "at": NOW - 90 * timedelta(minutes=1),
             "subject": "user:420", "actor": "user:70", "request": "req-10"},
            {"name": "group 42", "at": NOW - hours, "type": "group_created",
             "subject": "group:42", "actor": "user:7", "request": "req-3"},
            {"name": "nightly", "at": NOW - 30 * timedelta(minutes=1), "actor": "system"},
        ],
    )  # fmt: skip


def found_ids(**filters: Any) -> set[str]:
    page = search_events(parse_filters(now=NOW, **filters), searcher="test", limit=1000)
    assert not page.more
    return {event.event_id for event in page.events}


def ids_of(story: dict[str, str], *names: str) -> set[str]:
    return {story[name] for name in names}


# -- the three questions -------------------------------------------------------------


@pytest.mark.django_db
def test_what_happened_to_user_42_is_every_event_about_user_42_and_no_other(story):
    assert found_ids(subject="user:42") == ids_of(story, "42 created", "42 erased")


@pytest.mark.django_db
def test_what_did_request_r_do_is_every_event_of_that_request(story):
    assert found_ids(request_id="req-1") == ids_of(story, "42 created", "43 created")


@pytest.mark.django_db
def test_what_did_actor_a_do_between_t1_and_t2(story):
    since = (NOW - timedelta(hours=4)).isoformat()  # inclusive
    until = (NOW - timedelta(hours=1)).isoformat()  # exclusive

    assert found_ids(actor="user:7", since=since, until=until) == ids_of(
        story, "43 created", "44 created"
    )


@pytest.mark.django_db
def test_filters_combine_and_a_kind_alone_matches_every_id_of_it(story):
    assert found_ids(actor="user:7", event_types=["user_created"]) == ids_of(
        story, "42 created", "43 created", "44 created"
    )
    assert found_ids(actor="system") == ids_of(story, "nightly")
    assert found_ids(subject="user:42", since="4h") == ids_of(story, "42 erased")


@pytest.mark.django_db
def test_results_are_newest_first_and_paged_without_gaps_or_repeats(story):
    filters = parse_filters(now=NOW)
    pages = [search_events(filters, searcher="test", limit=3, offset=o) for o in (0, 3, 6)]

    assert [page.more for page in pages] == [True, True, False]
    listed = [event.event_id for page in pages for event in page.events]
    assert listed == [
        story[name]
        for name in ("nightly", "group 42", "420 created", "44 created", "42 erased",
                     "43 created", "42 created")
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_quote_in_a_filter_is_a_value_not_sql(story):
    assert found_ids(subject="user:42' OR '1'='1") == set()
    assert found_ids(request_id="req-1\\' OR 1=1 --") == set()


@pytest.mark.django_db(transaction=True)
def test_published_and_relayed_events_are_found_by_their_envelope(ch):
    """The whole way: publish() fills the envelope, the relay delivers it, the search
    finds each event by subject, request and actor."""
    created = {}
    for number, request_id in ((1, "req-a"), (2, "req-a"), (3, "req-b")):
        with (
            acting_as(Actor("user", "7") if number < 3 else Actor("user", "8")),
            structlog.contextvars.bound_contextvars(request_id=request_id),
        ):
            response = CreateUser().execute(
                CreateUserRequest(email=f"u{number}@example.com", first_name="U", last_name="N")
            )
        created[number] = response.user.id
    outbox = {
        json.loads(row.event_context)["user_id"]: str(row.event_id)
        for row in OutboxEvent.objects.filter(event_type="user_created")
    }
    assert run_relay().delivered == 3

    def ids(**filters: Any) -> set[str]:
        page = search_events(parse_filters(**filters), searcher="test", limit=100)
        return {event.event_id for event in page.events if event.event_type == "user_created"}

    assert ids(subject=f"user:{created[2]}") == {outbox[created[2]]}
    assert ids(request_id="req-a") == {outbox[created[1]], outbox[created[2]]}
    assert ids(actor="user:8") == {outbox[created[3]]}


# -- the command ---------------------------------------------------------------------


def run_search(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("event_log_search", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_the_command_answers_the_three_questions(story):
    def ids(answer: dict[str, Any]) -> set[str]:
        return {event["event_id"] for event in answer["events"]}

    assert ids(run_search("--subject", "user:42")) == ids_of(story, "42 created", "42 erased")
    assert ids(run_search("--request-id", "req-1")) == ids_of(story, "42 created", "43 created")
    window = ("--since", (NOW - timedelta(hours=4)).isoformat(),
              "--until", (NOW - timedelta(hours=1)).isoformat())  # fmt: skip
    assert ids(run_search("--actor", "user:7", *window)) == ids_of(
        story, "43 created", "44 created"
    )


@pytest.mark.django_db
def test_the_command_shows_the_envelope_and_the_parsed_context(story):
    answer = run_search("--subject", "user:42", "--type", "user_created")

    [event] = answer["events"]
    assert event["event_id"] == story["42 created"]
    assert event["actor"] == "user:7"
    assert event["subject"] == "user:42"
    assert event["request_id"] == "req-1"
    assert event["event_context"] == {"note": "42 created"}
    assert event["event_date_time"] == (NOW - timedelta(hours=5)).isoformat().replace("+00:00", "Z")
    assert answer["filters"] == {"subject": "user:42", "event_types": ["user_created"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--subject", "42"), "--subject: '42' is not a reference"),
        (("--subject", "User:42"), "--subject: 'User:42' is not a reference"),
        (("--subject", "user:"), "--subject: 'user:' is not a reference"),
        (("--actor", "a b:1"), "--actor: 'a b:1' is not a reference"),
        (("--since", "2 hours"), "--since: '2 hours' is neither a duration"),
        (("--until", "yesterday"), "--until: 'yesterday' is neither a duration"),
        (("--since", "1h", "--until", "2h"), "--since: .* is not before until"),
        (("--type", "UserCreated"), "--type: 'UserCreated' is not an event type"),
        (("--limit", "0"), "--limit: must be between 1 and 1000"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2_and_nothing_is_searched(args, message):
    with capture_logs() as logs, pytest.raises(CommandError, match=message) as raised:
        call_command("event_log_search", *args)

    assert raised.value.returncode == 2
    assert [log for log in logs if log["event"] == "event_log_searched"] == []


def test_a_search_that_cannot_be_recorded_shows_nothing_and_exits_1(ch, manage):
    insert_events(ch, [{"name": "42 created", "at": NOW, "subject": "user:42"}])

    result = manage(
        "event_log_search", "--subject", "user:42", "--json",
        env={"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none"},
    )  # fmt: skip

    assert result.returncode == 1
    assert "could not be recorded in the outbox" in result.stderr
    assert result.stdout == ""


def test_the_command_exits_with_2_for_bad_input_in_a_process_of_its_own(manage):
    result = manage("event_log_search", "--subject", "user 42")

    assert result.returncode == 2
    assert "--subject: 'user 42' is not a reference" in result.stderr


@pytest.mark.django_db
def test_every_search_is_logged_with_who_and_the_filters(story):
    with capture_logs() as logs:
        run_search("--subject", "user:42", "--since", "2026-11-30T08:00Z")

    [searched] = [log for log in logs if log["event"] == "event_log_searched"]
    assert searched["searcher"] == "command:event_log_search"
    assert searched["filters"] == {"subject": "user:42", "since": "2026-11-30T08:00:00+00:00"}
    assert searched["events"] == 1
    assert searched["output"] == "json"


@pytest.mark.django_db
def test_every_search_is_published_as_an_event_with_who_and_the_filters(story):
    run_search("--actor", "user:7", "--type", "user_created", "--since", "2026-11-30T06:00Z")

    [row] = OutboxEvent.objects.filter(event_type="event_log_searched")
    assert (row.actor_type, row.actor_id) == ("command", "event_log_search")
    assert json.loads(row.event_context) == {
        "searcher": "command:event_log_search",
        "event_types": ["user_created"],
        "subject_filter": None,
        "actor_filter": "user:7",
        "request_id_filter": None,
        "since": "2026-11-30T06:00:00Z",
        "until": None,
        "output": "json",
        "events_found": 3,
    }


# -- parsing -------------------------------------------------------------------------


def test_times_are_durations_back_from_now_or_iso_8601_in_utc():
    assert parse_time("2h", option="since", now=NOW) == NOW - timedelta(hours=2)
    assert parse_time("1w", option="since", now=NOW) == NOW - timedelta(days=7)
    assert parse_time("2026-11-30", option="since") == datetime(2026, 11, 30, tzinfo=UTC)
    assert parse_time("2026-11-30T08:00", option="since") == datetime(2026, 11, 30, 8, tzinfo=UTC)
    assert parse_time("2026-11-30T09:00+01:00", option="since") == datetime(
        2026, 11, 30, 8, tzinfo=UTC
    )


def test_references_are_kind_and_id_or_a_kind_alone():
    filters = parse_filters(subject="user:42", actor="system")
    assert filters.subject == Ref("user", "42")
    assert filters.actor == Ref("system")
    with pytest.raises(SearchInputError) as raised:
        parse_filters(subject=":42")
    assert raised.value.field == "subject"


def test_the_statement_holds_every_value_as_a_quoted_literal():
    statement = search_statement(
        parse_filters(subject="user:4'2", request_id="r\\'x", event_types=["user_created"]),
        limit=10,
    )
    assert "subject_id = '4\\'2'" in statement
    assert "request_id = 'r\\\\\\'x'" in statement
    assert "event_type IN ('user_created')" in statement
    assert "LIMIT 11 OFFSET 0" in statement


# -- the admin page ------------------------------------------------------------------

PAGE = "/admin/event_log/eventlogentry/"


def staff(*, permitted: bool) -> User:
    user = User.objects.create_user(email=f"staff-{permitted}@example.com", is_staff=True)
    if permitted:
        user.user_permissions.add(Permission.objects.get(codename="view_event_log"))
    return user


@pytest.mark.django_db
def test_staff_without_the_permission_get_403_and_no_search(client, story):
    client.force_login(staff(permitted=False))

    with capture_logs() as logs:
        response = client.get(PAGE, {"subject": "user:42"})

    assert response.status_code == 403
    assert [log for log in logs if log["event"] == "event_log_searched"] == []
    assert not OutboxEvent.objects.filter(event_type="event_log_searched").exists()
    assert client.get(PAGE, {"subject": "user:42", "format": "csv"}).status_code == 403


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get(PAGE)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_staff_with_the_permission_search_and_see_pretty_printed_context(client, story):
    user = staff(permitted=True)
    client.force_login(user)

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = client.get(PAGE, {"subject": "user:42"})

    assert response.status_code == 200
    events = response.context["events"]
    assert {event["event_id"] for event in events} == ids_of(story, "42 created", "42 erased")
    html = response.content.decode()
    assert "{\n  &quot;note&quot;: &quot;42 created&quot;\n}" in html
    [searched] = [log for log in logs if log["event"] == "event_log_searched"]
    assert searched["searcher"] == f"user:{user.pk}"
    assert searched["filters"] == {"subject": "user:42"}
    [published] = OutboxEvent.objects.filter(event_type="event_log_searched")
    assert json.loads(published.event_context)["searcher"] == f"user:{user.pk}"
    assert (published.actor_type, published.actor_id) == ("user", str(user.pk))
    assert published.request_id == searched["request_id"]


@pytest.mark.django_db
def test_the_page_needs_nothing_the_content_security_policy_forbids(client, story):
    client.force_login(staff(permitted=True))

    html = client.get(PAGE, {"subject": "user:42"}).content.decode()

    assert "42 created" in html
    scripts = re.findall(r"<script\b([^>]*)>", html)
    assert [attrs for attrs in scripts if "src=" not in attrs] == []
    assert not re.search(r"<style\b|\sstyle=\"", html)


@pytest.mark.django_db
def test_the_page_is_listed_in_the_admin_for_those_who_may_see_it(client):
    client.force_login(staff(permitted=True))
    assert PAGE in client.get("/admin/").content.decode()


@pytest.mark.django_db
def test_the_admin_answers_the_actor_question_with_a_time_range(client, story):
    client.force_login(staff(permitted=True))

    response = client.get(
        PAGE,
        {
            "actor": "user:7",
            "since": (NOW - timedelta(hours=4)).isoformat(),
            "until": (NOW - timedelta(hours=1)).isoformat(),
        },
    )

    ids = {event["event_id"] for event in response.context["events"]}
    assert ids == ids_of(story, "43 created", "44 created")


@pytest.mark.django_db
def test_the_admin_pages_through_every_event_once(client, story, monkeypatch):
    monkeypatch.setattr("event_log.search_admin.PAGE_SIZE", 3)
    client.force_login(staff(permitted=True))

    pages = [client.get(PAGE, {"page": number}) for number in (1, 2, 3)]

    listed = [event["event_id"] for page in pages for event in page.context["events"]]
    assert sorted(listed) == sorted(story.values())
    assert len(listed) == len(set(listed))
    assert [page.context["found"].more for page in pages] == [True, True, False]
    assert 'page=2">next</a>' in pages[0].content.decode()
    assert 'page=2">previous</a>' in pages[2].content.decode()


@pytest.mark.django_db
def test_bad_filters_in_the_admin_answer_400_with_the_field_error(client, story):
    client.force_login(staff(permitted=True))

    with capture_logs() as logs:
        response = client.get(PAGE, {"subject": "42", "since": "soon"})

    assert response.status_code == 400
    form = response.context["form"]
    assert "is not a reference" in form.errors["subject"][0]
    assert "is neither a duration" in form.errors["since"][0]
    assert response.context["events"] == []
    assert [log for log in logs if log["event"] == "event_log_searched"] == []


@pytest.mark.django_db
def test_the_csv_export_holds_the_matching_events_and_their_envelope(client, story):
    client.force_login(staff(permitted=True))

    response = client.get(PAGE, {"request_id": "req-1", "format": "csv"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["X-Event-Log-More"] == "false"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {row["event_id"] for row in rows} == ids_of(story, "42 created", "43 created")
    by_id = {row["event_id"]: row for row in rows}
    created = by_id[story["42 created"]]
    assert (created["actor"], created["subject"], created["request_id"]) == (
        "user:7",
        "user:42",
        "req-1",
    )
    assert json.loads(created["event_context"]) == {"note": "42 created"}


@pytest.mark.django_db
def test_a_csv_cell_that_a_spreadsheet_would_run_is_neutralised(client, ch):
    ids = insert_events(
        ch, [{"name": "formula", "at": NOW, "request": "=HYPERLINK(1)", "actor": "user:1"}]
    )
    client.force_login(staff(permitted=True))

    response = client.get(PAGE, {"actor": "user:1", "format": "csv"})

    [row] = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert row["event_id"] == ids["formula"]
    assert row["request_id"] == "'=HYPERLINK(1)"
