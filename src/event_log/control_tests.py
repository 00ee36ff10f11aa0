"""Operators pause and resume every relay, and retry a backing-off batch now."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import assert_exactly_once, publish_pings
from event_log.conf import event_log_settings
from event_log.control import relay_control, relays_pause, relays_paused, relays_resume
from event_log.models import OutboxBatch, OutboxEvent
from event_log.relay import Relay, run_relay
from event_log.relay.batch import Batch, event_id
from event_log.relay.claim import claim
from event_log.relay.finish import release
from event_log.status import outbox_status

pytestmark = pytest.mark.django_db(transaction=True)


def test_paused_relays_claim_nothing_and_deliver_everything_once_resumed(ch):
    published = publish_pings(30)
    relays_pause(by="ops", reason="ClickHouse upgrade")

    paused = run_relay()

    assert (paused.batches, paused.delivered) == (0, 0)
    assert not OutboxBatch.objects.exists(), "nothing was even sealed"
    assert set(OutboxEvent.objects.values_list("event_id", flat=True)) == set(published)
    assert ch.event_ids() == []

    relays_resume(by="ops")
    run_relay()

    assert_exactly_once(ch, published)


@pytest.mark.parametrize(
    ("step", "nth"),
    [("sealed", 2), ("sealed", 3), ("inserted", 2), ("finished", 1), ("finished", 2)],
)
def test_a_relay_paused_mid_backlog_sends_no_insert_after_the_flag(ch, step, nth):
    # Draining a backlog, a relay inserts one batch while its second connection seals
    # the next and finishes the one before (relay.overlap). Wherever the pause falls,
    # every INSERT after it is refused; what went in before is finished.
    published = publish_pings(60)
    config = event_log_settings(BATCH_SIZE=10, MIN_INSERT_INTERVAL=0)
    seen: list[Batch] = []
    inserted: list[tuple[Batch, bool]] = []  # (batch, after the pause?)

    def pause_at_the_nth(reached: str, batch: Batch) -> None:
        if reached == "inserted":
            inserted.append((batch, len(seen) >= nth))
        if reached == step:
            seen.append(batch)
            if len(seen) == nth:
                relays_pause(by="ops")

    report = Relay(config=config, checkpoint=pause_at_the_nth).run()

    assert [batch.id for batch, after_the_pause in inserted if after_the_pause] == []
    sent = {event_id(line) for batch, _ in inserted for line in batch.lines()}
    assert report.batches == len(inserted) < 6, "what went in was finished, not more"
    assert sorted(ch.event_ids()) == sorted(sent)
    _assert_no_batch_is_held()
    relays_resume(by="ops")
    run_relay()
    assert_exactly_once(ch, published)


def _assert_no_batch_is_held() -> None:
    """Batches a paused relay sealed are given back: taken at once after resume."""
    held = OutboxBatch.objects.filter(lease_until__gt=timezone.now())
    assert list(held.values_list("id", flat=True)) == []


def test_a_paused_relay_logs_relay_paused_once_per_run(ch):
    publish_pings(3)
    relays_pause(by="ops")

    with capture_logs() as logs:
        run_relay()
        run_relay()

    assert [entry["event"] for entry in logs if entry["event"] == "relay_paused"] == [
        "relay_paused",
        "relay_paused",
    ]
    assert all(entry["log_level"] == "info" for entry in logs if entry["event"] == "relay_paused")


def test_pausing_again_keeps_the_first_time_and_resume_clears_everything():
    first = relays_pause(by="ada", reason="upgrade")
    again = relays_pause(by="bob", reason="still upgrading")

    assert again.paused_at == first.paused_at
    assert (again.paused_by, again.reason) == ("bob", "still upgrading")
    assert relays_resume(by="ada").as_dict() == {
        "paused": False,
        "paused_by": "",
        "paused_at": None,
        "reason": "",
    }


def test_paused_relays_show_in_status_health_and_metrics(client):
    assert relays_paused() is False
    assert outbox_status().relays_paused is False
    relays_pause(by="ops")

    health = client.get("/health").json()
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(client.get("/metrics").content.decode())
        for sample in family.samples
    }
    status = StringIO()
    call_command("event_log_status", "--json", "--no-clickhouse", stdout=status)

    assert health["relays_paused"] is True
    assert metrics["event_log_relays_paused"] == 1.0
    assert json.loads(status.getvalue())["relays_paused"] is True


def test_event_log_relays_command_pauses_with_a_reason_and_resumes():
    out = StringIO()
    call_command("event_log_relays", "pause", "--reason", "disk full", stdout=out)
    assert relay_control().paused is True
    assert relay_control().reason == "disk full"
    assert "relays paused since" in out.getvalue()
    assert "disk full" in out.getvalue()

    call_command("event_log_relays", "resume", stdout=out)
    shown = StringIO()
    call_command("event_log_relays", "status", "--json", stdout=shown)
    assert json.loads(shown.getvalue())["paused"] is False


def test_relay_events_once_with_relays_paused_says_so_and_exits_3(ch, manage):
    publish_pings(2)
    relays_pause(by="ops")

    done = manage("relay_events", "--once")

    assert done.returncode == 3, done.stderr
    assert "relays are paused" in done.stderr
    assert OutboxEvent.objects.count() == 2


# -- the admin -------------------------------------------------------------------------


def _backing_off_batch(*, error: str = "Code: 252. TOO_MANY_PARTS") -> OutboxBatch:
    publish_pings(4)
    batch = claim(event_log_settings())
    assert batch is not None
    release(batch, delay=3600, error=error)
    return OutboxBatch.objects.get(id=batch.id)


def test_admin_lists_sealed_batches_with_attempts_error_lease_ids_and_rows(admin_client):
    batch = _backing_off_batch()

    page = admin_client.get("/admin/event_log/outboxbatch/").content.decode()
    opened = admin_client.get(f"/admin/event_log/outboxbatch/{batch.id}/change/")

    assert str(batch.id) in page
    assert "TOO_MANY_PARTS" in page
    for column in ("attempts", "last error", "lease until", "first id", "last id", "rows"):
        assert column in page.lower()
    assert '<td class="field-rows">4</td>' in page
    assert opened.status_code == 200
    assert "TOO_MANY_PARTS" in opened.content.decode()


def test_admin_retry_now_makes_a_backing_off_batch_due_and_the_next_run_delivers_it(
    admin_client, ch
):
    batch = _backing_off_batch()
    assert run_relay().delivered == 0, "it backs off for an hour"

    response = admin_client.post(
        "/admin/event_log/outboxbatch/",
        {"action": "retry_now", "_selected_action": [str(batch.id)]},
        follow=True,
    )

    assert "1 batches due now" in response.content.decode()
    assert run_relay().delivered == 4
    assert not OutboxBatch.objects.exists()
    assert len(ch.event_ids()) == 4


def test_admin_pause_and_resume_actions_set_the_flag_and_say_who(admin_client, admin_user):
    admin_client.get("/admin/event_log/relaycontrol/")  # the one row exists from here on
    admin_client.post(
        "/admin/event_log/relaycontrol/", {"action": "pause", "_selected_action": ["1"]}
    )
    paused = relay_control()
    admin_client.post(
        "/admin/event_log/relaycontrol/", {"action": "resume", "_selected_action": ["1"]}
    )

    assert paused.paused is True
    assert paused.paused_by == f"{admin_user.get_username()} (admin)"
    assert relay_control().paused is False


def test_staff_without_the_change_permission_can_neither_retry_nor_pause(client):
    batch = _backing_off_batch()
    lease = batch.lease_until
    viewer = get_user_model().objects.create_user("viewer@example.com", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_outboxbatch", "view_relaycontrol"])
    )
    client.force_login(viewer)

    listing = client.get("/admin/event_log/outboxbatch/")
    client.post(
        "/admin/event_log/outboxbatch/",
        {"action": "retry_now", "_selected_action": [str(batch.id)]},
    )
    client.get("/admin/event_log/relaycontrol/")
    client.post("/admin/event_log/relaycontrol/", {"action": "pause", "_selected_action": ["1"]})

    assert listing.status_code == 200
    assert "retry_now" not in listing.content.decode()
    assert OutboxBatch.objects.get(id=batch.id).lease_until == lease
    assert relays_paused() is False
