"""The envelope: who, about what, from which request and trace, on every event."""

from __future__ import annotations

import re
import uuid

import pytest
import redis
import sentry_sdk
import structlog
from celery import shared_task
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils.functional import SimpleLazyObject
from structlog.testing import capture_logs

from conftest import RUN_ID, WORKER, Ping, celery_argv, insert_outbox_rows, running, wait_until
from event_log import Event, envelope, publish, sql
from event_log.dead_letters import dead_letters_replay
from event_log.envelope import SYSTEM, Actor, acting_as, current_actor, request_actor, task_queued
from event_log.models import DeadLetter, OutboxEvent
from event_log.publisher import InvalidEventError
from event_log.relay import run_relay
from users.events import UserCreated
from users.models import User

BEFORE_ENVELOPE = [("event_log", "0003_relay_control")]


def migrate_to(targets: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def relation_files() -> dict[str, int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname, pg_relation_filenode(oid) FROM pg_class "
            "WHERE relname IN ('event_log_outbox', 'event_log_dead_letter')"
        )
        return dict(cur.fetchall())


# -- the PostgreSQL migration -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_envelope_migration_keeps_every_row_and_rewrites_no_table():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    migrate_to(BEFORE_ENVELOPE)
    try:
        pending = set(insert_outbox_rows(["2026-01-01 00:00:00+00"] * 500))
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO event_log_dead_letter (event_id, event_type, event_date_time, "
                "environment, event_context, metadata_version, error, attempts, batch_id, "
                "dead_lettered_at) SELECT gen_random_uuid(), 'ping', now(), 'test', '{}', 1, "
                "'refused', 1, gen_random_uuid(), now() FROM generate_series(1, 20) "
                "RETURNING event_id"
            )
            dead = {row[0] for row in cur.fetchall()}
        files_before = relation_files()

        migrate_to(latest)

        assert relation_files() == files_before  # no table was rewritten
    finally:
        migrate_to(latest)
    columns = ("event_id", *sql.ENVELOPE_COLUMNS)
    outbox = list(OutboxEvent.objects.values_list(*columns))
    letters = list(DeadLetter.objects.values_list(*columns))
    assert {row[0] for row in outbox} == pending and len(outbox) == len(pending)
    assert {row[0] for row in letters} == dead and len(letters) == len(dead)
    assert {row[1:] for row in outbox + letters} == {("",) * len(sql.ENVELOPE_COLUMNS)}


# -- every origin: the outbox row and the ClickHouse row carry the envelope ---------------

PHRASE = "a-long-enough-Passw0rd"


def envelopes_in_clickhouse(ch) -> dict[uuid.UUID, tuple[str, ...]]:
    columns = ", ".join(sql.ENVELOPE_COLUMNS)
    return {
        row[0]: tuple(row[1:]) for row in ch.query(f"SELECT event_id, {columns} FROM {ch.table}")
    }


def deliver_and_compare(ch) -> dict[uuid.UUID, tuple[str, ...]]:
    """Deliver the outbox; assert ClickHouse holds exactly its rows, envelopes unchanged."""
    outbox = {
        row[0]: tuple(row[1:])
        for row in OutboxEvent.objects.values_list("event_id", *sql.ENVELOPE_COLUMNS)
    }
    run_relay()
    assert envelopes_in_clickhouse(ch) == outbox
    return outbox


@pytest.mark.django_db(transaction=True)
def test_an_api_call_s_event_names_the_api_client_the_user_and_the_request(client, ch, settings):
    settings.DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = True
    response = client.post(
        "/api/users",
        {"email": "ada@example.com"},
        content_type="application/json",
        HTTP_X_REQUEST_ID="req-api-1",
    )

    assert response.status_code == 201
    user_id = str(response.json()["id"])
    [envelope] = deliver_and_compare(ch).values()
    assert envelope == ("api_client", "", "user", user_id, "req-api-1", "")


@pytest.mark.django_db(transaction=True)
def test_a_user_added_in_the_admin_names_the_staff_member_who_added_it(admin_client, ch):
    staff = User.objects.get()
    response = admin_client.post(
        "/admin/users/user/add/",
        {"email": "added@example.com", "password1": PHRASE, "password2": PHRASE},
    )

    assert response.status_code == 302
    added = User.objects.get(email="added@example.com")
    [(actor_type, actor_id, subject_type, subject_id, request_id, traceparent)] = (
        deliver_and_compare(ch).values()
    )
    assert (actor_type, actor_id) == ("user", str(staff.pk))
    assert (subject_type, subject_id) == ("user", str(added.pk))
    assert request_id == response["X-Request-ID"] != ""
    assert traceparent == ""


@pytest.mark.django_db(transaction=True)
def test_a_management_command_s_event_names_the_command(ch, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PHRASE)
    call_command(
        "createsuperuser",
        "--noinput",
        email="root@example.com",
        first_name="Grace",
        last_name="Hopper",
        verbosity=0,
    )

    root = User.objects.get()
    [envelope] = deliver_and_compare(ch).values()
    assert envelope == ("command", "createsuperuser", "user", str(root.pk), "", "")


@shared_task(name="event_log.envelope_tests.publish_ping")
def publish_ping(n: int) -> None:
    with transaction.atomic():
        publish(Ping(n=n))


@pytest.mark.django_db(transaction=True)
def test_a_celery_task_s_event_names_the_task_or_whoever_queued_it(ch):
    publish_ping.apply(kwargs={"n": 1})  # queued by nobody (Beat, a worker's own)
    headers: dict[str, str] = {}
    with (
        acting_as(Actor("user", "42")),
        structlog.contextvars.bound_contextvars(request_id="req-task-1"),
    ):
        task_queued(headers=headers)  # what before_task_publish does for apply_async
    publish_ping.apply(kwargs={"n": 2}, headers=headers)

    envelopes = deliver_and_compare(ch)
    assert sorted(envelopes.values()) == [
        ("task", "event_log.envelope_tests.publish_ping", "", "", "", ""),
        ("user", "42", "", "", "", ""),
    ]
    assert current_actor() == SYSTEM  # the task's actor did not outlive it


@pytest.mark.django_db(transaction=True)
def test_a_dead_lettered_and_replayed_event_keeps_its_envelope(ch):
    with acting_as(Actor("command", "backfill")), transaction.atomic():
        [event_id] = publish(
            UserCreated(user_id=7, email="x@example.com", first_name="", last_name="")
        )
    OutboxEvent.objects.update(event_context="not json")  # ClickHouse refuses it
    before = set(OutboxEvent.objects.values_list(*sql.ENVELOPE_COLUMNS))

    run_relay()
    letters = set(DeadLetter.objects.values_list(*sql.ENVELOPE_COLUMNS))
    DeadLetter.objects.update(event_context='{"user_id": 7}')
    dead_letters_replay(ids=list(DeadLetter.objects.values_list("id", flat=True)))
    run_relay()

    assert before == letters == {("command", "backfill", "user", "7", "", "")}
    assert envelopes_in_clickhouse(ch) == {event_id: ("command", "backfill", "user", "7", "", "")}


# -- the envelope's parts -----------------------------------------------------------------


def test_nothing_bound_is_the_system_acting_outside_any_request():
    assert envelope.current() == ("system", "", "", "")


def test_values_too_long_or_with_nul_are_fitted_to_their_columns():
    with (
        acting_as(Actor("t\x00ask", "x" * 400)),
        structlog.contextvars.bound_contextvars(request_id="r" * 300),
    ):
        actor_type, actor_id, request_id, _ = envelope.current()
    assert (actor_type, len(actor_id), len(request_id)) == ("task", 255, 128)


@pytest.mark.django_db
def test_a_subject_id_longer_than_its_column_is_refused_before_anything_is_written():
    class LongSubject(Event):
        subject = ("thing", "thing_id")
        thing_id: str

    with transaction.atomic(), pytest.raises(InvalidEventError, match="subject id"):
        publish(LongSubject(thing_id="x" * 256))
    assert not OutboxEvent.objects.exists()


def test_a_sampled_sentry_span_gives_a_w3c_traceparent(sentry_capture):
    with sentry_sdk.start_transaction(name="t", sampled=True) as transaction_span:
        traceparent = envelope.current_traceparent()
    with sentry_sdk.start_transaction(name="t", sampled=False):
        unsampled = envelope.current_traceparent()

    assert traceparent == f"00-{transaction_span.trace_id}-{transaction_span.span_id}-01"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", traceparent)
    assert unsampled == ""


def test_a_web_request_s_actor_is_a_user_only_once_the_request_has_loaded_it(rf):
    request = rf.get("/")
    request.user = SimpleLazyObject(lambda: pytest.fail("the user was loaded"))
    assert request_actor(request) == Actor("api_client")

    request.user = AnonymousUser()
    assert request_actor(request) == Actor("api_client")


@pytest.mark.django_db
def test_the_admin_shows_the_envelope_of_outbox_rows_and_dead_letters(admin_client):
    with acting_as(Actor("command", "backfill")), transaction.atomic():
        publish(UserCreated(user_id=7, email="x@example.com", first_name="", last_name=""))
    outbox = OutboxEvent.objects.get()
    letter = DeadLetter.objects.create(
        event_id=uuid.uuid4(),
        event_type="ping",
        event_date_time=outbox.event_date_time,
        environment="test",
        event_context="{}",
        error="refused",
        batch_id=uuid.uuid4(),
        actor_type="task",
        actor_id="nightly_import",
        request_id="req-dead-1",
    )

    outbox_page = admin_client.get(f"/admin/event_log/outboxevent/{outbox.pk}/change/")
    letter_page = admin_client.get(f"/admin/event_log/deadletter/{letter.pk}/change/")

    assert outbox_page.status_code == letter_page.status_code == 200
    assert b"backfill" in outbox_page.content and b"Subject id" in outbox_page.content
    assert b"nightly_import" in letter_page.content and b"req-dead-1" in letter_page.content


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_actor_and_request_id_travel_into_a_task_run_by_a_real_worker(
    ch, process_env, tmp_path
):
    from event_log.testing.tasks import publish_probe

    # No kick: the worker only runs the probe tasks; this process delivers afterwards.
    env = {**process_env, "LOG_FORMAT": "json", "EVENT_LOG_KICK": "false"}
    worker_log = tmp_path / "worker.log"
    argv = celery_argv(*WORKER, "--include", "event_log.testing.tasks")
    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    broker.delete(RUN_ID)
    with running(argv, env=env, log=worker_log):
        wait_until(lambda: b"ready" in worker_log.read_bytes(), timeout=60)
        with (
            acting_as(Actor("user", "42")),
            structlog.contextvars.bound_contextvars(request_id="req-task-7"),
        ):
            publish_probe.apply_async(kwargs={"n": 1})  # as a view would
        publish_probe.apply_async(kwargs={"n": 2})  # as Beat would: no actor, no request
        wait_until(lambda: OutboxEvent.objects.count() == 2, timeout=60)
    broker.delete(RUN_ID)
    broker.close()

    envelopes = deliver_and_compare(ch)
    assert sorted(envelopes.values()) == [
        ("task", "event_log.testing.publish_probe", "", "", "", ""),
        ("user", "42", "", "", "req-task-7", ""),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_batch_s_log_lines_name_the_request_id_of_its_first_event(ch):
    with structlog.contextvars.bound_contextvars(request_id="req-first"), transaction.atomic():
        publish(Ping(n=1))
    with structlog.contextvars.bound_contextvars(request_id="req-second"), transaction.atomic():
        publish(Ping(n=2))
    with capture_logs() as logs:
        run_relay()
    with transaction.atomic():
        publish(Ping(n=3))  # outside any request
    with capture_logs() as later:
        run_relay()

    [delivered] = [line for line in logs if line["event"] == "outbox_batch_delivered"]
    [delivered_later] = [line for line in later if line["event"] == "outbox_batch_delivered"]
    assert (delivered["first_request_id"], delivered["rows"]) == ("req-first", 2)
    assert "first_request_id" not in delivered_later
