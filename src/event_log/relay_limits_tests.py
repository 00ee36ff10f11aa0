"""The relay at the limits of PostgreSQL, ClickHouse and a proxy between them.

Big re-sent batches, connections terminated mid-claim, driver exceptions, months
of data, thousands of failed attempts, batches too large in bytes or in months,
and batches full of bad rows: every scenario ends with each event in ClickHouse
exactly once or in the dead-letter table, compared as full sets of event ids.
"""

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from django.db import connection, transaction
from structlog.testing import capture_logs

from conftest import (
    Ping,
    assert_exactly_once,
    fast_config,
    insert_outbox_rows,
    publish_pings,
    unused_port,
)
from event_log import clickhouse, publish
from event_log.clickhouse import ClickHouseError
from event_log.faults_tests import time_ago
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent
from event_log.relay import Relay, backoff_delay
from event_log.relay import claim as claim_step

pytestmark = pytest.mark.django_db(transaction=True)


class Crash(Exception):
    """A relay dying at a checkpoint."""


def crash_at(step_name: str):
    def checkpoint(step, batch):
        if step == step_name:
            raise Crash

    return checkpoint


def expire_leases() -> None:
    OutboxBatch.objects.update(lease_until=time_ago(1))


def publish_big(*texts: str) -> list[uuid.UUID]:
    with transaction.atomic():
        return publish(*(Ping(n=n, text=text) for n, text in enumerate(texts)))


def dead_letter_ids() -> set[uuid.UUID]:
    return set(DeadLetter.objects.values_list("event_id", flat=True))


def drain(config, *, runs: int = 10) -> int:
    """Run relays until the outbox is empty (postponed batches included); returns the runs."""
    for run in range(1, runs + 1):
        expire_leases()
        Relay(config=config).run(time_budget=5)
        if not OutboxEvent.objects.exists():
            return run
    raise AssertionError(f"the outbox is not empty after {runs} runs")


class Inserts:
    """Every INSERT the relay sends: its block's size and rows, and whether it went in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, refuse_over: int | None = None):
        self.sent: list[tuple[int, list[bytes], bool]] = []
        real = clickhouse.insert_tsv

        def insert_tsv(ch: Any, *, block: bytes, **kwargs: Any) -> None:
            lines = block.splitlines()
            if refuse_over is not None and len(block) > refuse_over:
                self.sent.append((len(block), lines, False))
                # What clickhouse-connect raises for a proxy's 413 (Request Entity Too Large).
                raise ClickHouseError("HTTP driver received HTTP status 413", http_status=413)
            try:
                real(ch, block=block, **kwargs)
            except ClickHouseError:
                self.sent.append((len(block), lines, False))
                raise
            self.sent.append((len(block), lines, True))

        monkeypatch.setattr(clickhouse, "insert_tsv", insert_tsv)

    @property
    def accepted(self) -> list[list[bytes]]:
        return [lines for _, lines, ok in self.sent if ok]


# -- item 9: every failure behind one boundary, lookups for any batch ------------


def test_a_resent_batch_of_10000_rows_is_looked_up_within_max_query_size_and_delivered_once(
    ch,
):
    """10,000 ids inlined in one query would pass ClickHouse's 256 KiB max_query_size."""
    published = publish_pings(10_000)
    config = fast_config(BATCH_SIZE=10_000)
    with pytest.raises(Crash):
        Relay(config=config, checkpoint=crash_at("inserted")).run()
    assert len(ch.event_ids()) == 10_000, "inserted, not deleted: as if the relay died"
    expire_leases()

    report = Relay(config=config).run()

    assert (report.batches, report.delivered, report.failures) == (1, 10_000, 0)
    assert_exactly_once(ch, published)
    assert OutboxEvent.objects.count() == 0


def test_a_postgresql_connection_terminated_right_before_the_copy_does_not_crash_the_run(
    ch, monkeypatch
):
    """psycopg's AdminShutdown from COPY is not wrapped by Django: the boundary takes it."""
    published = publish_pings(300)
    real_copy_out = claim_step.copy_out
    terminated: list[int] = []

    def terminate_then_copy(cur, statement):
        if not terminated:
            cur.execute("SELECT pg_backend_pid()")
            terminated.append(cur.fetchone()[0])
            db = connection.settings_dict
            with psycopg.connect(
                host=db["HOST"],
                port=db["PORT"] or 5432,
                user=db["USER"],
                password=db["PASSWORD"] or None,
                dbname=db["NAME"],
                autocommit=True,
            ) as other:
                other.execute("SELECT pg_terminate_backend(%s)", [terminated[0]])
        return real_copy_out(cur, statement)

    monkeypatch.setattr(claim_step, "copy_out", terminate_then_copy)

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run()

    assert terminated, "the connection was terminated before the COPY"
    assert report.failures >= 1
    assert report.drained
    assert_exactly_once(ch, published)
    assert OutboxBatch.objects.count() == 0


def test_a_missing_clickhouse_table_postpones_a_resent_batch_and_the_run_returns(ch):
    published = publish_pings(200)
    Relay(config=fast_config()).claim()
    expire_leases()  # re-sent: its rows are looked up before anything is sent

    report = Relay(config=fast_config(CLICKHOUSE_TABLE="event_log_missing")).run(time_budget=0.5)

    assert report.delivered == 0
    assert report.failures >= 1
    assert OutboxEvent.objects.count() == 200, "nothing dropped"
    assert OutboxBatch.objects.count() == 1, "the batch stays sealed"
    expire_leases()
    Relay(config=fast_config()).run()
    assert_exactly_once(ch, published)


def test_an_unexpected_driver_exception_postpones_the_batch_and_the_run_goes_on(ch, monkeypatch):
    published = publish_pings(200)
    real = clickhouse.insert_tsv
    raised: list[Exception] = []

    def broken_once(*args: Any, **kwargs: Any) -> None:
        if not raised:
            raised.append(KeyError("a driver bug"))
            raise raised[0]
        real(*args, **kwargs)

    monkeypatch.setattr(clickhouse, "insert_tsv", broken_once)

    with capture_logs() as logs:
        report = Relay(config=fast_config()).run()

    assert report.failures == 1
    assert report.drained
    crashed = [log for log in logs if log["event"] == "outbox_batch_crashed"]
    assert len(crashed) == 1
    assert crashed[0]["batch_id"]
    assert_exactly_once(ch, published)


def test_a_batch_holding_an_event_replayed_from_years_ago_is_looked_up_without_scanning(
    ch, monkeypatch
):
    """The lookup names each row by the whole sorting key: the years between its oldest
    and newest event are not read."""
    with clickhouse.client(ch.url) as client:
        # Years of other events of the same type, one every 800 seconds.
        client.command(
            f"INSERT INTO {ch.table} (event_id, event_type, event_date_time, environment,"
            " event_context, metadata_version) SELECT generateUUIDv4(), 'ping',"
            " toDateTime64('2024-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(number * 800),"
            " 'filler', '{}', 1"
            " FROM numbers(100000)",
            settings={"max_partitions_per_insert_block": 0},
        )
    published = insert_outbox_rows([datetime(2024, 3, 1, 12, tzinfo=UTC)])
    published += publish_pings(99)
    Relay(config=fast_config()).claim()
    expire_leases()  # re-sent: looked up before and after sending
    lookups: list[tuple[str, Any]] = []
    real_query = Client.query

    def recording(client: Client, query: str, parameters: Any = None, **kwargs: Any) -> Any:
        if "event_id" in query and " IN " in query:
            lookups.append((query, parameters))
        return real_query(client, query, parameters, **kwargs)

    monkeypatch.setattr(Client, "query", recording)

    report = Relay(config=fast_config()).run()

    monkeypatch.undo()
    assert report.delivered == 100
    months = ch.query(
        f"SELECT uniqExact(toYYYYMM(event_date_time)) FROM {ch.table} WHERE environment = 'filler'"
    )
    assert months[0][0] >= 24, "the other events span the years between"
    delivered = ch.query(f"SELECT event_id FROM {ch.table} WHERE environment != 'filler'")
    assert sorted(row[0] for row in delivered) == sorted(published)
    assert lookups, "a re-sent batch is looked up"
    limit = {"max_rows_to_read": 4 * 8192, "read_overflow_mode": "throw"}
    with clickhouse.client(ch.url) as client:
        for statement, parameters in lookups:
            # Raises TOO_MANY_ROWS when the granules the key selects hold more rows.
            client.query(statement, parameters, settings=limit)
            plan = client.query(f"EXPLAIN indexes = 1 {statement}", parameters).result_rows
            assert "PrimaryKey" in "\n".join(row[0] for row in plan)


# -- item 10: back-off for ever ------------------------------------------------


@pytest.mark.parametrize("attempt", [1_025, 5_000, 10**6])
def test_backoff_after_thousands_of_attempts_stays_within_its_cap(attempt):
    delays = [backoff_delay(attempt, initial=0.5, cap=30.0) for _ in range(100)]

    assert all(15.0 <= delay <= 30.0 for delay in delays)


def test_a_batch_on_its_5000th_attempt_is_postponed_and_the_run_returns(ch):
    publish_pings(10)
    Relay(config=fast_config()).claim()
    OutboxBatch.objects.update(attempts=4_999, lease_until=time_ago(1))
    down = Relay(config=fast_config(), clickhouse_url=f"http://127.0.0.1:{unused_port()}/default")

    report = down.run(time_budget=0.5)

    assert report.failures >= 1
    batch = OutboxBatch.objects.get()
    assert batch.attempts >= 5_000
    assert OutboxEvent.objects.count() == 10


# -- item 11: batches capped by bytes ------------------------------------------


def test_batches_are_capped_by_bytes_of_event_context_as_well_as_by_rows(ch, monkeypatch):
    cap = 16 * 1024
    inserts = Inserts(monkeypatch)
    published = publish_pings(60, chunk=60)
    published += publish_big(*["x" * 1_000] * 60)

    report = Relay(config=fast_config(BATCH_SIZE=1_000, BATCH_MAX_BYTES=cap)).run()

    context_bytes = [sum(len(line.split(b"\t")[4]) for line in lines) for lines in inserts.accepted]
    assert report.batches == len(inserts.accepted) >= math.ceil(60 * 1_000 / cap)
    assert all(size <= cap for size in context_bytes), context_bytes
    assert_exactly_once(ch, published)


@pytest.mark.parametrize(
    ("cap_over_total", "rows"),
    [(1, 12), (0, 12), (-1, 11), ("first", 1), ("below first", 1)],
)
def test_the_seal_takes_rows_up_to_the_byte_cap_exactly(cap_over_total, rows):
    """At, just under and far under the rows' total bytes: the seal's cap is exact
    whether the rows fit at once or have to be counted one by one."""
    publish_big(*["y" * (1_100 + 37 * i) for i in range(12)])
    with connection.cursor() as cur:
        cur.execute("SELECT octet_length(event_context) FROM event_log_outbox ORDER BY id")
        sizes = [size for (size,) in cur.fetchall()]
    cap = {"first": sizes[0], "below first": sizes[0] - 1}.get(cap_over_total)
    if cap is None:
        cap = sum(sizes) + cap_over_total

    batch = claim_step.claim(fast_config(BATCH_SIZE=1_000, BATCH_MAX_BYTES=cap))

    assert batch is not None and batch.rows == rows
    assert OutboxEvent.objects.filter(batch_id=batch.id).count() == rows
    assert OutboxEvent.objects.filter(batch_id__isnull=True).count() == 12 - rows


def test_one_event_over_the_byte_cap_is_dead_lettered_with_a_clear_error_and_the_rest_delivered(
    ch, monkeypatch
):
    cap = 16 * 1024
    inserts = Inserts(monkeypatch)
    published = publish_pings(20)
    [too_big] = publish_big("x" * (cap + 1))
    published += publish_pings(20)

    report = Relay(config=fast_config(BATCH_SIZE=1_000, BATCH_MAX_BYTES=cap)).run()

    assert report.dead_lettered == 1
    assert_exactly_once(ch, published)
    letter = DeadLetter.objects.get()
    assert letter.event_id == too_big
    assert "EVENT_LOG_BATCH_MAX_BYTES" in letter.error
    assert all(
        too_big not in {uuid.UUID(line[:36].decode()) for line in lines}
        for _, lines, _ in inserts.sent
    ), "it was never sent"
    assert OutboxEvent.objects.count() == 0


# -- item 12: errors that retrying cannot cure -----------------------------------


def test_events_spread_over_150_months_are_delivered_exactly_once(ch, monkeypatch):
    """One INSERT over more than 100 months fails with TOO_MANY_PARTS ("too many
    partitions for single INSERT block") however often it is retried."""
    inserts = Inserts(monkeypatch)
    months = [datetime(2010 + m // 12, m % 12 + 1, 15, tzinfo=UTC) for m in range(150)]
    published = insert_outbox_rows(months)

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run(time_budget=10)

    assert report.drained
    assert (report.delivered, report.dead_lettered) == (150, 0)
    assert_exactly_once(ch, published)
    assert len(inserts.accepted) <= 4, "split by month, not row by row"


def test_an_insert_refused_with_413_is_split_and_a_single_row_still_refused_is_dead_lettered(
    ch, monkeypatch
):
    inserts = Inserts(monkeypatch, refuse_over=20_000)
    published = publish_pings(400)
    [too_big] = publish_big("x" * 25_000)
    published += publish_pings(400)

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run(time_budget=10)

    assert report.drained
    assert report.dead_lettered == 1
    assert_exactly_once(ch, published)
    assert dead_letter_ids() == {too_big}
    assert "413" in DeadLetter.objects.get().error
    assert all(size <= 20_000 for size, _, ok in inserts.sent if ok)
    assert OutboxEvent.objects.count() == 0


def test_a_batch_failing_for_alert_after_attempts_is_logged_as_stuck_at_error_level(ch):
    publish_pings(10)
    down = Relay(
        config=fast_config(ALERT_AFTER_ATTEMPTS=3),
        clickhouse_url=f"http://127.0.0.1:{unused_port()}/default",
    )

    with capture_logs() as logs:
        down.run(time_budget=2)

    failed = [log for log in logs if log["event"] in {"outbox_batch_failed", "outbox_batch_stuck"}]
    assert [log["attempt"] for log in failed][:3] == [1, 2, 3]
    for log in failed:
        stuck = log["attempt"] >= 3
        assert log["event"] == ("outbox_batch_stuck" if stuck else "outbox_batch_failed")
        assert log["log_level"] == ("error" if stuck else "warning")
        assert log["batch_id"] and log["error"]
    assert OutboxEvent.objects.count() == 10


# -- item 13: the cost of isolating bad rows -------------------------------------


def publish_half_bad(count: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """``count`` rows alternating good and refused by ClickHouse's CHECK (469)."""
    contexts = [f'{{"n": {n}}}' if n % 2 else f'{{"n": {n}, oops' for n in range(count)]
    now = datetime.now(UTC)
    ids = insert_outbox_rows([now] * count, contexts=contexts)
    return ids[1::2], ids[0::2]


@pytest.mark.slow
def test_500_bad_rows_in_1000_are_isolated_in_a_bounded_number_of_inserts(ch, monkeypatch):
    inserts = Inserts(monkeypatch)
    good, bad = publish_half_bad(1_000)

    drain(fast_config(BATCH_SIZE=1_000))

    assert len(inserts.sent) <= 2 * 500 + 10, f"{len(inserts.sent)} inserts"
    assert len(inserts.accepted) <= 10, f"{len(inserts.accepted)} parts"
    assert_exactly_once(ch, good)
    assert dead_letter_ids() == set(bad)
    assert DeadLetter.objects.count() == 500
    assert {letter.error_code for letter in DeadLetter.objects.all()} == {469}


def test_isolation_under_a_small_insert_budget_completes_over_several_attempts(ch, monkeypatch):
    inserts = Inserts(monkeypatch)
    good, bad = publish_half_bad(60)
    config = fast_config(BATCH_SIZE=1_000, ISOLATION_MAX_INSERTS=10)

    drain(config)

    attempts = {letter.attempts for letter in DeadLetter.objects.all()}
    assert len(attempts) > 1, "the budget left rows for later attempts"
    assert len(inserts.sent) <= 2 * 30 + 10
    assert_exactly_once(ch, good)
    assert dead_letter_ids() == set(bad)
    assert DeadLetter.objects.count() == 30
    assert OutboxBatch.objects.count() == 0


def test_an_event_just_under_the_byte_cap_is_delivered_alone_as_with_company(ch):
    """The seal and the relay measure an event the same way: its context's bytes."""
    cap = 4_096
    text = "x" * (cap - 200)  # the context is under the cap; the whole row is not
    with transaction.atomic():
        published = publish(Ping(n=1, text=text))

    report = Relay(config=fast_config(BATCH_SIZE=1_000, BATCH_MAX_BYTES=cap)).run()

    assert (report.delivered, report.dead_lettered) == (1, 0)
    assert_exactly_once(ch, published)
