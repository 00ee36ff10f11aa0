"""The relay protocol under the interleavings review found: paused relays, late
landings, tokens kept without their rows, relays that finish second.

Each test drives real relays (threads of this process) against the real PostgreSQL
and the real ClickHouse engine, and ends by comparing full sets of event ids.
"""

import threading
import uuid

import pytest
from django.db import connection

from conftest import (
    assert_exactly_once,
    fast_config,
    insert_poison_row,
    publish_pings,
    tsv_line,
)
from event_log import clickhouse, schema
from event_log.clickhouse import ClickHouseError
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent, RelayStats
from event_log.relay import Relay
from event_log.relay import isolate as isolate_step
from event_log.relay.finish import release

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def expire_leases() -> None:
    with connection.cursor() as cur:
        cur.execute("UPDATE event_log_batch SET lease_until = now() - interval '1 second'")


class Paused:
    """A checkpoint that holds a relay thread at one step until released."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.reached = threading.Event()
        self.resume = threading.Event()

    def __call__(self, step, batch) -> None:
        if step == self.step and batch.attempts == 1 and not self.reached.is_set():
            self.reached.set()
            assert self.resume.wait(60)


def in_thread(target):
    result = {}

    def run():
        try:
            result["report"] = target()
        except BaseException as exc:  # surfaced by the test's assertions
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_relay_paused_past_its_lease_sends_nothing_when_it_wakes(ch, monkeypatch):
    """Item 5: the paused relay's first attempt would land after the window forgot it."""
    published = publish_pings(500)
    pause = Paused("sealed")
    # A window of one block, as if thousands of inserts had followed the take-over.
    monkeypatch.setattr(schema, "ensure_table_ready", lambda *args, **kwargs: None)
    ch.command(f"ALTER TABLE {ch.table} MODIFY SETTING non_replicated_deduplication_window = 1")
    try:
        thread, paused = in_thread(
            lambda: Relay(config=fast_config(BATCH_SIZE=1_000), checkpoint=pause).run(max_batches=1)
        )
        assert pause.reached.wait(30)
        expire_leases()
        taken_over = Relay(config=fast_config(BATCH_SIZE=1_000)).run()
        with clickhouse.client(ch.url) as client:
            for _ in range(2):
                stray = tsv_line(uuid.uuid4(), "other", "2026-01-01 00:00:00")
                clickhouse.insert_tsv(client, table=ch.table, block=stray, token=str(uuid.uuid4()))
        pause.resume.set()
        thread.join(60)
    finally:
        ch.command(
            f"ALTER TABLE {ch.table} MODIFY SETTING non_replicated_deduplication_window = 10000"
        )

    assert "error" not in paused
    assert taken_over.delivered == 500
    assert paused["report"].leases_lost == 1
    assert paused["report"].delivered == 0
    ch.command(f"DELETE FROM {ch.table} WHERE event_type = 'other'")
    assert_exactly_once(ch, published)


def test_a_sub_batch_whose_token_clickhouse_kept_without_its_rows_is_completed(ch):
    """Item 1: a ClickHouse that died during isolation kept the sub-batches' tokens only."""
    published = publish_pings(300)
    poison = insert_poison_row()
    published += publish_pings(300)

    class Crash(Exception):
        pass

    def die_after_insert(step, batch):
        if step == "inserted":
            raise Crash

    with pytest.raises(Crash):
        Relay(config=fast_config(BATCH_SIZE=1_000), checkpoint=die_after_insert).run()
    assert len(ch.event_ids()) == 600, "isolation delivered the good rows"
    # What a ClickHouse process that died mid-INSERT can come back with: the tokens
    # of the good rows' INSERTs in its deduplication log, the rows gone.
    ch.command(f"DELETE FROM {ch.table} WHERE event_type = 'ping'")
    assert ch.event_ids() == []
    expire_leases()

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()

    assert (report.delivered, report.dead_lettered) == (600, 1)
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {poison}
    assert_exactly_once(ch, published)


def test_an_insert_that_lands_after_its_client_gave_up_is_dropped_as_a_duplicate(ch, monkeypatch):
    """Item 6: the same rows go under the same token whichever attempt sends them."""
    published = publish_pings(300)
    batch = Relay(config=fast_config(BATCH_SIZE=1_000)).claim()
    assert batch is not None
    # A third of the rows landed without the batch's token (part of a multi-block
    # INSERT, or a ClickHouse that kept the rows and lost the token).
    with clickhouse.client(ch.url) as client:
        clickhouse.insert_tsv(
            client,
            table=ch.table,
            block=b"".join(batch.lines()[:100]),
            token=str(uuid.uuid4()),
        )
    expire_leases()

    real_insert = clickhouse.insert_tsv
    late: list[dict] = []

    def client_gives_up_once(ch_client, **kwargs):
        if not late:
            late.append(kwargs)  # the server has the body and will finish it later
            raise ClickHouseError("Read timed out. (read timeout=15)")
        real_insert(ch_client, **kwargs)

    monkeypatch.setattr(isolate_step.clickhouse, "insert_tsv", client_gives_up_once)
    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()
    monkeypatch.setattr(isolate_step.clickhouse, "insert_tsv", real_insert)
    assert report.failures == 1
    assert OutboxEvent.objects.count() == 0

    # The first attempt's INSERT of the 200 missing rows completes now, long after
    # its client gave up and the next attempt sent the same rows.
    with clickhouse.client(ch.url) as client:
        real_insert(client, **late[0])

    assert_exactly_once(ch, published)


def test_a_relay_that_finishes_second_changes_nothing_and_counts_nothing(ch):
    """Item 14: the first holder wakes after another relay delivered and dead-lettered."""
    published = publish_pings(500)
    poison = insert_poison_row()
    published += publish_pings(499)
    pause = Paused("inserted")

    thread, first = in_thread(
        lambda: Relay(config=fast_config(BATCH_SIZE=1_000), checkpoint=pause).run(max_batches=1)
    )
    assert pause.reached.wait(60)
    expire_leases()
    second = Relay(config=fast_config(BATCH_SIZE=1_000)).run()
    pause.resume.set()
    thread.join(60)

    assert "error" not in first, first.get("error")
    assert (second.delivered, second.dead_lettered) == (999, 1)
    assert (first["report"].delivered, first["report"].dead_lettered) == (0, 0)
    assert first["report"].leases_lost == 1
    totals = [
        sum(row)
        for row in zip(
            *RelayStats.objects.values_list("events_delivered", "events_dead_lettered"),
            strict=True,
        )
    ]
    assert totals == [999, 1], "each event counted once"
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {poison}
    assert OutboxBatch.objects.count() == 0
    assert_exactly_once(ch, published)


def test_a_batch_taken_over_while_its_first_holder_waits_is_finished_by_the_new_holder_only(ch):
    """The fence is the attempt number: the first holder's postpone changes nothing either."""
    publish_pings(10)
    first = Relay(config=fast_config()).claim()
    assert first is not None
    expire_leases()
    second = Relay(config=fast_config()).claim()
    assert second is not None
    assert (second.id, second.attempts) == (first.id, 2)

    release(first, delay=3600, error="stale")

    batch = OutboxBatch.objects.get()
    assert batch.last_error == "", "a stale holder cannot postpone the batch"


@pytest.mark.parametrize(
    ("timeout", "lease", "warned"), [(15.0, 30.0, False), (20.0, 30.0, True), (2.0, 3.0, True)]
)
def test_the_check_warns_when_one_guarded_insert_can_outlast_the_lease(
    settings, timeout, lease, warned
):
    from event_log.checks import check_event_log_settings

    settings.EVENT_LOG = {**settings.EVENT_LOG, "INSERT_TIMEOUT": timeout, "LEASE_SECONDS": lease}

    ids = [message.id for message in check_event_log_settings()]

    assert ("event_log.W002" in ids) is warned


def test_a_batch_failing_again_and_again_is_reported_as_stuck_in_status_and_metrics(
    ch, client, settings
):
    from event_log.status import outbox_status

    settings.EVENT_LOG = {**settings.EVENT_LOG, "ALERT_AFTER_ATTEMPTS": 3}
    publish_pings(20)
    for _ in range(2):
        Relay(config=fast_config(BATCH_SIZE=10)).claim()
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE event_log_batch SET attempts = 3"
            " WHERE first_id = (SELECT min(first_id) FROM event_log_batch)"
        )

    assert outbox_status().batches_stuck == 1
    metrics = client.get("/metrics").content.decode()
    assert "event_log_batches_stuck 1.0" in metrics
