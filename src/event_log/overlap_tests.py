"""Overlap (event_log.relay.overlap): while one batch is inserted, a second connection
finishes the batch before and seals the next. Its failures and early ends lose,
duplicate and strand nothing."""

import threading
import time
from collections import defaultdict
from datetime import timedelta

import pytest
import sentry_sdk
from django.db import OperationalError, connection
from django.utils import timezone

from conftest import assert_exactly_once, fast_config, publish_pings
from event_log.clickhouse import ClickHouseError
from event_log.conf import event_log_settings
from event_log.models import OutboxBatch, OutboxEvent
from event_log.relay import Relay, loop, run_relay, tracing
from event_log.relay.claim import claim

pytestmark = pytest.mark.django_db(transaction=True)

SECOND = "relay-pg"  # the second connection's thread (relay.overlap)


def _in_second_thread() -> bool:
    return threading.current_thread().name.startswith(SECOND)


def _backends() -> set[int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        return {row[0] for row in cur.fetchall()}


def _steps_by_thread(run) -> tuple[object, dict[str, list[bool]]]:
    """Run ``run()`` and note, for each step, whether each time ran on the second connection."""
    on_second: dict[str, list[bool]] = defaultdict(list)

    def observe(step: str, seconds: float) -> None:
        on_second[step].append(_in_second_thread())

    tracing.step_observers.append(observe)
    try:
        return run(), on_second
    finally:
        tracing.step_observers.remove(observe)


def _slower_on_the_second_connection(monkeypatch, step: str, seconds: float) -> None:
    real = getattr(loop, step)

    def slow(*args, **kwargs):
        if _in_second_thread():
            time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, step, slow)


def _slow_inserts(monkeypatch, seconds: float = 0.5) -> None:
    """Every INSERT outlasts the seal beside it, so each finish goes to the second
    connection (the relay's thread finishes only while a seal is still going on)."""
    real_write = Relay.write

    def slow_insert(self, batch):
        time.sleep(seconds)
        return real_write(self, batch)

    monkeypatch.setattr(Relay, "write", slow_insert)


def test_a_backlog_is_finished_and_sealed_on_the_second_connection_while_batches_go_in(ch):
    published = publish_pings(6_000)

    before = _backends()
    report, on_second = _steps_by_thread(Relay(config=fast_config(BATCH_SIZE=500)).run)

    assert report.drained and report.batches == 12 and report.failures == 0
    assert_exactly_once(ch, published)
    assert any(on_second["seal batch"])
    assert not any(on_second["insert batch"])
    assert not [t for t in threading.enumerate() if t.name.startswith(SECOND)], "thread ended"
    assert _backends() <= before, "the second connection is closed at the end of the run"


def test_a_finish_goes_to_the_second_connection_when_the_next_batch_is_sealed_in_time(
    ch, monkeypatch
):
    published = publish_pings(3_000)
    _slow_inserts(monkeypatch)
    report, on_second = _steps_by_thread(Relay(config=fast_config(BATCH_SIZE=500)).run)

    assert report.drained and report.batches == 6 and report.failures == 0
    assert_exactly_once(ch, published)
    # The first batch of the run, and the one after it, are finished one step at a time.
    assert sum(on_second["delete batch"]) >= 3
    assert sum(on_second["seal batch"]) >= 4


def test_the_relay_finishes_what_it_inserted_itself_while_the_next_seal_is_slower(ch, monkeypatch):
    published = publish_pings(3_000)
    _slower_on_the_second_connection(monkeypatch, "claim", seconds=0.5)

    report, on_second = _steps_by_thread(Relay(config=fast_config(BATCH_SIZE=500)).run)

    assert report.drained and report.batches == 6 and report.failures == 0
    assert_exactly_once(ch, published)
    assert not any(on_second["delete batch"]), "every finish in the relay's own thread"
    assert sum(on_second["seal batch"]) >= 4, "the seals ahead on the second connection"
    assert OutboxBatch.objects.count() == 0


def test_a_trickle_is_relayed_one_step_at_a_time_on_one_connection(ch):
    published = publish_pings(300)
    threads: set[str] = set()
    tracing.step_observers.append(
        lambda step, seconds: threads.add(threading.current_thread().name)
    )
    try:
        report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()
    finally:
        tracing.step_observers.pop()

    assert report.batches == 1
    assert_exactly_once(ch, published)
    assert threads == {threading.current_thread().name}


def _fail_on_the_second_connection(monkeypatch, step: str, times: int) -> list[bool]:
    """Make ``relay.loop.<step>`` raise a database error the first ``times`` times it is
    called on the second connection; returns the list of failures made so far."""
    real = getattr(loop, step)
    failed: list[bool] = []

    def failing(*args, **kwargs):
        if _in_second_thread() and len(failed) < times:
            failed.append(True)
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, step, failing)
    return failed


def test_a_finish_failing_on_the_second_connection_is_retried_and_nothing_is_lost(ch, monkeypatch):
    published = publish_pings(5_000)
    _slow_inserts(monkeypatch, seconds=0.2)
    failed = _fail_on_the_second_connection(monkeypatch, "finish", times=1)

    report = Relay(config=fast_config(BATCH_SIZE=500)).run(time_budget=60)

    assert failed, "a finish on the second connection failed"
    assert report.failures == 1 and report.drained
    assert OutboxEvent.objects.count() == 0 and OutboxBatch.objects.count() == 0
    assert_exactly_once(ch, published)


def test_a_claim_failing_on_the_second_connection_falls_back_to_the_relay_s_own(ch, monkeypatch):
    published = publish_pings(5_000)
    failed = _fail_on_the_second_connection(monkeypatch, "claim", times=3)

    report = Relay(config=fast_config(BATCH_SIZE=500)).run(time_budget=60)

    assert len(failed) == 3
    assert report.drained and report.batches == 10
    assert OutboxEvent.objects.count() == 0 and OutboxBatch.objects.count() == 0
    assert_exactly_once(ch, published)


def test_a_run_cut_short_gives_back_the_batch_it_sealed_ahead_at_once(ch, monkeypatch):
    published = publish_pings(5_000)
    real_write = Relay.write
    writes: list[object] = []

    def second_insert_fails(self, batch):
        writes.append(batch.id)
        if len(writes) == 2:
            raise ClickHouseError("Code: 210. Connection refused", code=210)
        return real_write(self, batch)

    monkeypatch.setattr(Relay, "write", second_insert_fails)
    # The back-off after the failure outlasts the budget: the run ends there.
    config = event_log_settings(BATCH_SIZE=500, BACKOFF_INITIAL=30, BACKOFF_MAX=30)
    report = Relay(config=config).run(time_budget=5)

    assert report.batches == 1 and report.failures == 1
    failed_batch, ahead = writes[1], _third_batch_sealed()
    now = timezone.now()
    leases = dict(OutboxBatch.objects.values_list("id", "lease_until"))
    assert leases.keys() == {failed_batch, ahead}
    assert leases[failed_batch] > now, "the failed batch waits out its back-off"
    assert leases[ahead] <= now, "the batch sealed ahead is free for any relay at once"

    monkeypatch.setattr(Relay, "write", real_write)
    taken = run_relay(max_batches=1)
    assert taken.batches == 1
    assert not OutboxBatch.objects.filter(id=ahead).exists(), "taken without waiting"

    OutboxBatch.objects.update(lease_until=timezone.now())
    run_relay()
    assert_exactly_once(ch, published)


def _third_batch_sealed() -> object:
    """The batch sealed during the second one's insert: the one with the highest ids."""
    return OutboxBatch.objects.order_by("-first_id").values_list("id", flat=True)[0]


def test_a_relay_killed_with_two_batches_in_hand_leaves_both_to_the_next(ch, monkeypatch):
    published = publish_pings(5_000)

    class Killed(BaseException):
        pass

    inserted: list[object] = []

    def die_after_the_third_insert(step: str, batch: object) -> None:
        if step == "inserted":
            inserted.append(batch)
            if len(inserted) == 3:
                time.sleep(0.2)  # the second connection has sealed the fourth by now
                raise Killed

    with pytest.raises(Killed):
        Relay(config=fast_config(BATCH_SIZE=500), checkpoint=die_after_the_third_insert).run()

    # Inserted and not finished, and sealed ahead: both held until their leases end.
    assert OutboxBatch.objects.count() == 2
    OutboxBatch.objects.update(lease_until=timezone.now())
    report = run_relay()
    assert report.drained
    assert_exactly_once(ch, published)


def test_the_second_connection_s_steps_are_spans_of_the_relay_run(ch, sentry_capture):
    published = publish_pings(3_000)

    report = Relay(config=fast_config(BATCH_SIZE=500)).run()
    sentry_sdk.flush()

    assert report.batches == 6
    assert_exactly_once(ch, published)
    [trace] = sentry_capture.items("transaction")
    assert trace["transaction"] == "relay run"
    run_span = trace["contexts"]["trace"]["span_id"]
    spans = trace["spans"]
    names = [span["description"] for span in spans]
    # The relay seals the first two batches itself (the first insert goes one step at
    # a time), the second connection the other four and one claim that finds nothing,
    # then the relay's last claim finds nothing: eight seals. Every seal and finish is
    # in the run's trace, as a child of the run, whichever thread made it.
    assert names.count("event_log seal batch") == 8
    assert names.count("event_log delete batch") == 6
    assert names.count("event_log insert batch") == 6
    steps = [
        s for s in spans if s["description"] in {"event_log seal batch", "event_log delete batch"}
    ]
    assert {span["parent_span_id"] for span in steps} == {run_span}


def test_a_batch_taken_over_before_its_finish_on_the_second_connection_is_left_alone(
    ch, monkeypatch
):
    # A relay that stalls past its lease between the INSERT and the finish: another
    # relay takes the batch over; the late finish on the second connection must delete,
    # chain and count nothing, and the new holder delivers it once.
    published = publish_pings(3_000)
    real_finish = loop.finish
    taken: list[object] = []

    def taken_over_first(batch, **kwargs):
        if _in_second_thread() and not taken:
            OutboxBatch.objects.filter(id=batch.id).update(
                lease_until=timezone.now() - timedelta(seconds=1)
            )
            taken.append(claim(fast_config()))  # the other relay, then it stalls
        return real_finish(batch, **kwargs)

    monkeypatch.setattr(loop, "finish", taken_over_first)
    _slow_inserts(monkeypatch, seconds=0.2)
    report = Relay(config=fast_config(BATCH_SIZE=500)).run(time_budget=60)

    [other] = taken
    assert other is not None and other.attempts == 2
    assert report.leases_lost == 1 and report.batches == 5
    assert list(OutboxBatch.objects.values_list("id", "attempts")) == [(other.id, 2)]
    assert OutboxEvent.objects.count() == 500, "its rows stay until their holder finishes"

    OutboxBatch.objects.update(lease_until=timezone.now())
    assert run_relay().delivered == 500
    assert_exactly_once(ch, published)
