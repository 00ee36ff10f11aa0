"""Operator commands: relay_events --once and event_log_dead_letters, run as operators run them."""

import pytest

from conftest import assert_exactly_once, publish_pings, unused_port
from event_log.conf import event_log_settings
from event_log.models import OutboxBatch, OutboxEvent
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
