"""Erasure of a subject's personal fields while its events are everywhere at once."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from conftest import fast_config
from event_log import clickhouse, publish, tasks
from event_log.conf import event_log_settings
from event_log.erasure import (
    ERASED,
    ErasureError,
    erase_subject_in_clickhouse,
    erased_context,
    event_log_erase,
)
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent
from event_log.protocol_tests import Paused, in_thread
from event_log.relay import Relay, run_relay
from event_log.relay import isolate as isolate_step
from event_log.relay.claim import claim
from event_log.relay.write import write
from event_log.verify import verify_log
from users.events import UserCreated

pytestmark = pytest.mark.django_db(transaction=True)

ERASED_USER, OTHER_USER = 41, 42


@pytest.fixture(autouse=True)
def follow_ups(monkeypatch) -> list[dict]:
    """The follow-up passes erasures queue (kept here instead of the broker)."""
    queued: list[dict] = []

    def apply_async(*, kwargs, countdown, **options):
        queued.append({**kwargs, "countdown": countdown})

    monkeypatch.setattr(tasks.erase_subject_in_clickhouse, "apply_async", apply_async)
    return queued


def _event(user_id: int, n: int) -> UserCreated:
    return UserCreated(
        user_id=user_id,
        email=f"user{user_id}.n{n}@example.com",
        first_name=f"First{user_id}x{n}",
        last_name=f"Last{user_id}x{n}",
    )


def _personal_values(user_id: int) -> list[str]:
    return [f"user{user_id}.n", f"First{user_id}x", f"Last{user_id}x"]


def _publish(*events: UserCreated) -> list[uuid.UUID]:
    with transaction.atomic():
        return publish(*events)


def _dead_letter(event: UserCreated) -> uuid.UUID:
    event_id = uuid.uuid4()
    DeadLetter.objects.create(
        event_id=event_id,
        event_type=event.event_type,
        event_date_time=datetime.now(UTC),
        environment="test",
        event_context=event.model_dump_json(),
        error="Code: 469 (VIOLATED_CONSTRAINT) row 1, column event_context",
        batch_id=uuid.uuid4(),
    )
    return event_id


def _everything_in_postgresql() -> str:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT coalesce(string_agg(event_context, ' '), '') FROM event_log_outbox "
            "UNION ALL SELECT coalesce(string_agg(event_context || error, ' '), '') "
            "FROM event_log_dead_letter "
            "UNION ALL SELECT coalesce(string_agg(last_error, ' '), '') FROM event_log_batch"
        )
        return " ".join(row[0] for row in cur.fetchall())


def test_erasing_a_subject_in_flight_leaves_none_of_its_values_and_others_untouched(ch):
    """Its events are delivered, in a sealed batch that already landed, in a sealed
    batch not yet sent, waiting in the outbox and dead-lettered, all at once."""
    config = event_log_settings()
    delivered = _publish(_event(ERASED_USER, 0), _event(OTHER_USER, 0))
    run_relay()

    landed = _publish(_event(ERASED_USER, 1), _event(OTHER_USER, 1))
    landed_batch = claim(config)
    with clickhouse.client() as client:
        write(client, config, landed_batch, timeout=10)  # a relay dies before its delete

    sealed = _publish(_event(ERASED_USER, 2), _event(OTHER_USER, 2))
    sealed_batch = claim(config)  # a relay dies before its insert
    assert {landed_batch.id, sealed_batch.id} == set(
        OutboxBatch.objects.values_list("id", flat=True)
    )

    waiting = _publish(_event(ERASED_USER, 3), _event(OTHER_USER, 3))
    dead = [_dead_letter(_event(ERASED_USER, 4)), _dead_letter(_event(OTHER_USER, 4))]
    others_before = {
        json.loads(context)["email"]
        for (context,) in ch.query(f"SELECT event_context FROM {ch.table}")
        if json.loads(context)["user_id"] == OTHER_USER
    }

    report = event_log_erase(subject=f"user:{ERASED_USER}")

    assert (report.outbox_events, report.dead_letters) == (3, 1)
    assert report.in_flight_batches == 2
    assert report.clickhouse_events == 2  # the delivered one and the landed batch's
    # Both sealed batches expire; the relay re-reads their rows and re-sends what
    # ClickHouse lacks, then the waiting rows; the dead letters are replayed too.
    OutboxBatch.objects.update(lease_until=datetime.now(UTC) - timedelta(seconds=1))
    call_command("event_log_dead_letters", "replay", "--all", verbosity=0)
    run_relay()

    rows = ch.query(f"SELECT event_id, event_type, event_context FROM {ch.table}")
    ids = [row[0] for row in rows]
    erasures = [row for row in rows if row[1] == "subject_erased"]
    published = [*delivered, *landed, *sealed, *waiting, *dead]
    assert sorted(ids) == sorted([*published, erasures[0][0]]), "each event once, none lost"
    assert len(erasures) == 1
    everything = " ".join(row[2] for row in rows) + _everything_in_postgresql()
    for value in _personal_values(ERASED_USER):
        assert value not in everything
    contexts = {row[0]: json.loads(row[2]) for row in rows}
    erased = [c for c in contexts.values() if c.get("user_id") == ERASED_USER]
    assert len(erased) == 5
    assert all(c["email"] == c["first_name"] == c["last_name"] == ERASED for c in erased)
    others = [c for c in contexts.values() if c.get("user_id") == OTHER_USER]
    assert sorted(c["email"] for c in others) == [
        f"user{OTHER_USER}.n{n}@example.com" for n in range(5)
    ]
    assert others_before <= {c["email"] for c in others}
    assert json.loads(erasures[0][2]) == {
        "subject_kind": "user",
        "subject_id": str(ERASED_USER),
        "event_types": ["user_created"],
        "outbox_events": 3,
        "dead_letters": 1,
        "clickhouse_events": 2,
    }


def _assert_erased_everywhere_and_others_delivered_once(ch, published: list[uuid.UUID]) -> None:
    """None of ERASED_USER's values in ClickHouse or PostgreSQL; every published event
    (and one subject_erased) in ClickHouse once; OTHER_USER's events as published."""
    rows = ch.query(f"SELECT event_id, event_type, event_context FROM {ch.table}")
    erasures = [row[0] for row in rows if row[1] == "subject_erased"]
    assert len(erasures) == 1
    assert sorted(row[0] for row in rows) == sorted([*published, *erasures])
    everything = " ".join(row[2] for row in rows) + _everything_in_postgresql()
    for value in _personal_values(ERASED_USER):
        assert value not in everything
    contexts = [json.loads(row[2]) for row in rows if row[1] == "user_created"]
    assert {c["email"] for c in contexts if c["user_id"] == ERASED_USER} == {ERASED}
    assert sorted(c["email"] for c in contexts if c["user_id"] == OTHER_USER) == [
        f"user{OTHER_USER}.n{n}@example.com" for n in range(3)
    ]
    # The batch chain expects the erased text: erasure entries hold the new digests.
    report = verify_log(since=datetime.now(UTC) - timedelta(hours=1))
    assert report.chain is not None
    assert report.as_dict()["clean"], report.as_dict()


def _publish_both_users() -> list[uuid.UUID]:
    return _publish(
        *(_event(user_id, n) for n in range(3) for user_id in (ERASED_USER, OTHER_USER))
    )


def test_a_relay_paused_past_its_lease_with_the_subject_s_rows_copied_sends_nothing(ch, follow_ups):
    """It sealed the batch and copied its rows (the old text), then slept; meanwhile
    the erasure ran and another relay delivered the batch. Awake, it sends nothing."""
    published = _publish_both_users()
    pause = Paused("sealed")
    thread, paused = in_thread(
        lambda: Relay(config=fast_config(BATCH_SIZE=1_000), checkpoint=pause).run(max_batches=1)
    )
    try:
        assert pause.reached.wait(30)
        (batch,) = OutboxBatch.objects.all()
        assert batch.attempts == 1

        report = event_log_erase(subject=f"user:{ERASED_USER}")

        fenced = OutboxBatch.objects.get()
        taken_over = run_relay()
    finally:
        pause.resume.set()
        thread.join(60)

    assert (report.outbox_events, report.in_flight_batches) == (3, 1)
    assert fenced.attempts == 2, "taken over as a new attempt"
    assert fenced.lease_until <= datetime.now(UTC), "and released"
    assert taken_over.delivered == 7, "the batch, then the subject_erased event"
    assert "error" not in paused
    assert (paused["report"].leases_lost, paused["report"].delivered) == (1, 0)
    config = event_log_settings()
    assert follow_ups == [
        {
            "subject": f"user:{ERASED_USER}",
            "countdown": config.INSERT_TIMEOUT + config.LEASE_SECONDS,
        }
    ]
    assert erase_subject_in_clickhouse(subject=f"user:{ERASED_USER}") == 0, "nothing came late"
    _assert_erased_everywhere_and_others_delivered_once(ch, published)


def test_an_insert_in_flight_during_the_erasure_is_erased_by_the_follow_up_pass(
    ch, follow_ups, monkeypatch
):
    """The residual window: a relay renewed its lease just before the fence, and its
    INSERT (the old text) lands after the erasure's mutation. The follow-up pass,
    run by the worker's task, erases it; no event is lost or doubled."""
    published = _publish_both_users()
    renewed, resume = threading.Event(), threading.Event()
    renew_lease = isolate_step.renew_lease

    def renew_then_stall(batch, *, lease):
        renew_lease(batch, lease=lease)
        if batch.attempts == 1 and not renewed.is_set():
            renewed.set()
            assert resume.wait(60)

    monkeypatch.setattr(isolate_step, "renew_lease", renew_then_stall)
    thread, late = in_thread(lambda: Relay(config=fast_config(BATCH_SIZE=1_000)).run())
    try:
        assert renewed.wait(30)
        report = event_log_erase(subject=f"user:{ERASED_USER}")
    finally:
        resume.set()
        thread.join(60)
    run_relay()

    assert (report.in_flight_batches, report.clickhouse_events) == (1, 0)
    assert "error" not in late
    assert late["report"].leases_lost == 1, "its delete was fenced"
    landed = " ".join(row[0] for row in ch.query(f"SELECT event_context FROM {ch.table}"))
    assert f"user{ERASED_USER}.n0@example.com" in landed, "the old text landed late"
    assert [f["subject"] for f in follow_ups] == [f"user:{ERASED_USER}"]
    worker_relay = Relay()
    monkeypatch.setattr(tasks, "_relay", worker_relay)
    try:
        assert tasks.erase_subject_in_clickhouse(subject=follow_ups[0]["subject"]) == 3
    finally:
        worker_relay.close()
    _assert_erased_everywhere_and_others_delivered_once(ch, published)


def test_erasing_again_rewrites_nothing(ch):
    _publish(_event(ERASED_USER, 0))
    run_relay()
    event_log_erase(subject=f"user:{ERASED_USER}")

    again = event_log_erase(subject=f"user:{ERASED_USER}")

    assert (again.outbox_events, again.dead_letters, again.clickhouse_events) == (0, 0, 0)


@pytest.mark.parametrize("subject", ["user", "user:", ":42", "order:42"])
def test_a_bad_subject_is_refused_and_nothing_is_written(subject):
    _publish(_event(ERASED_USER, 0))
    before = list(OutboxEvent.objects.values_list("event_context", flat=True))

    with pytest.raises(ErasureError):
        event_log_erase(subject=subject)
    with pytest.raises(CommandError):
        call_command("event_log_erase", "--subject", subject)

    assert list(OutboxEvent.objects.values_list("event_context", flat=True)) == before


def test_erased_context_keeps_the_shape_and_the_other_fields():
    context = _event(7, 1).model_dump_json()

    erased = json.loads(erased_context(context, ("email", "first_name", "last_name")))

    assert erased == {"user_id": 7, "email": ERASED, "first_name": ERASED, "last_name": ERASED}


def test_the_user_admin_action_erases_the_selected_user_only(ch, admin_client):
    from users.models import User

    for user_id in (ERASED_USER, OTHER_USER):
        User.objects.create_user(id=user_id, email=f"account{user_id}@example.com")
    _publish(_event(ERASED_USER, 0), _event(OTHER_USER, 0))
    run_relay()

    response = admin_client.post(
        "/admin/users/user/",
        {"action": "erase_from_event_log", "_selected_action": [ERASED_USER]},
    )

    assert response.status_code == 302
    contexts = [json.loads(row[0]) for row in ch.query(f"SELECT event_context FROM {ch.table}")]
    emails = {c["user_id"]: c["email"] for c in contexts if "email" in c}
    assert emails == {ERASED_USER: ERASED, OTHER_USER: f"user{OTHER_USER}.n0@example.com"}
