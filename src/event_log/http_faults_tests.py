"""The server path under faults: the relay talks HTTP to a ClickHouse front end over
the real engine (event_log.testing.clickhouse_http) that delays, drops connections,
answers 5xx or a proxy's 413, or runs an insert after the client gave up.

Every delivery scenario ends by comparing the full set of published event ids with
the full set in ClickHouse, and the lengths.
"""

import random
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection

from conftest import (
    assert_exactly_once,
    fast_config,
    insert_poison_row,
    kill_relays_at_random,
    publish_pings,
    relay_process,
    tsv_line,
    wait_until,
)
from event_log import clickhouse, sql
from event_log.clickhouse import ClickHouseError
from event_log.conf import event_log_settings
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent
from event_log.relay import Relay
from event_log.testing.clickhouse_http import (
    Delay,
    DropAfterExecute,
    DropBeforeBody,
    LateExecute,
    ProxyStatus,
    ServerError,
    inserts_into,
)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

SRC = Path(__file__).resolve().parents[1]
TABLE = event_log_settings().CLICKHOUSE_TABLE


def relay_over(http, *, time_budget: float = 60, **overrides):
    """One relay run against the front end, its client closed afterwards."""
    relay = Relay(config=fast_config(**overrides), clickhouse_url=http.url)
    try:
        return relay.run(time_budget=time_budget)
    finally:
        relay.close()


def insert_faults(http, name: str) -> list:
    return [o for o in http.front.outcomes if o.fault == name and o.request.insert_table == TABLE]


# -- one relay, one fault at a time --------------------------------------------


def test_relay_over_http_delivers_exactly_once_when_inserts_are_slow(clickhouse_http):
    published = publish_pings(2_000)
    clickhouse_http.arm(Delay(match=inserts_into(TABLE), times=3, seconds=0.3))

    report = relay_over(clickhouse_http, BATCH_SIZE=500)

    assert report.drained
    assert report.failures == 0, "a delay shorter than the timeout is no failure"
    assert len(insert_faults(clickhouse_http, "Delay")) == 3
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_resends_a_batch_whose_connection_dropped_before_the_body(
    clickhouse_http,
):
    published = publish_pings(1_500)
    # clickhouse-connect re-sends an insert once by itself on a remote close: drop both.
    clickhouse_http.arm(DropBeforeBody(match=inserts_into(TABLE), times=2))

    report = relay_over(clickhouse_http, BATCH_SIZE=500)

    assert report.failures == 1
    assert report.drained
    assert len(insert_faults(clickhouse_http, "DropBeforeBody")) == 2
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_does_not_duplicate_a_batch_whose_answer_was_lost_after_it_landed(
    clickhouse_http,
):
    published = publish_pings(1_500)
    clickhouse_http.arm(DropAfterExecute(match=inserts_into(TABLE), times=2))

    report = relay_over(clickhouse_http, BATCH_SIZE=500)

    assert report.failures == 1, "the relay saw the dropped connection"
    assert report.drained
    landed = [o for o in insert_faults(clickhouse_http, "DropAfterExecute") if o.executed]
    assert len(landed) == 2, "the rows landed (twice, under one token) before the drop"
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_backs_off_on_a_5xx_with_a_clickhouse_code_and_delivers(
    clickhouse_http,
):
    published = publish_pings(1_000)
    clickhouse_http.arm(
        ServerError(
            match=inserts_into(TABLE),
            times=3,
            status=500,
            code=252,
            message="Too many parts (300). Merges are processing significantly slower than inserts",
            name="TOO_MANY_PARTS",
        )
    )

    report = relay_over(clickhouse_http, BATCH_SIZE=1_000)

    assert report.failures == 3
    assert report.drained
    assert all("Code: 252" in error for error in report.errors)
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_does_not_duplicate_an_insert_that_lands_after_the_client_timed_out(
    clickhouse_http,
):
    published = publish_pings(1_000)
    # The client gives up after 1 s; the first insert lands 2.5 s after it was read,
    # while the relay is already re-sending the batch.
    clickhouse_http.arm(LateExecute(match=inserts_into(TABLE), times=1, seconds=2.5))

    report = relay_over(clickhouse_http, BATCH_SIZE=1_000, INSERT_TIMEOUT=1.0)

    assert report.failures == 1
    assert report.drained
    wait_until(lambda: insert_faults(clickhouse_http, "LateExecute"), timeout=30)
    [late] = insert_faults(clickhouse_http, "LateExecute")
    assert late.executed and not late.answered
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_does_not_duplicate_late_inserts_that_land_after_every_retry(
    clickhouse_http,
):
    """Each attempt times out and lands late, after the next attempt looked for its rows."""
    published = publish_pings(600)
    late = clickhouse_http.arm(LateExecute(match=inserts_into(TABLE), times=3, seconds=3.5))

    report = relay_over(clickhouse_http, BATCH_SIZE=1_000, INSERT_TIMEOUT=1.0)

    assert report.drained
    assert report.failures >= 2
    wait_until(lambda: len(insert_faults(clickhouse_http, "LateExecute")) == late.hits, timeout=30)
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_dead_letters_a_poison_row_refused_with_a_400(clickhouse_http):
    published = publish_pings(200)
    poison = insert_poison_row()
    published += publish_pings(200)

    report = relay_over(clickhouse_http, BATCH_SIZE=1_000)

    assert (report.delivered, report.dead_lettered) == (400, 1)
    letter = DeadLetter.objects.get()
    assert (letter.event_id, letter.error_code) == (poison, 469)
    refused = [o for o in clickhouse_http.front.outcomes if o.error_code == 469]
    assert refused, "the refusal came over HTTP with its exception code"
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_over_http_delivers_batches_a_proxy_refuses_as_too_large(clickhouse_http):
    published = publish_pings(1_000)
    # A proxy that takes at most ~32 KiB per request: a batch of 1,000 pings is larger.
    clickhouse_http.arm(
        ProxyStatus(match=lambda r: r.insert_table == TABLE and r.body_size > 32_768, times=10**6)
    )

    relay_over(clickhouse_http, BATCH_SIZE=1_000, time_budget=5)

    assert_exactly_once(clickhouse_http.probe, published)


# -- the front end itself --------------------------------------------------------


def test_the_front_end_takes_inserts_in_every_shape_clickhouse_connect_sends(clickhouse_http):
    """Plain and compressed TabSeparated blocks (the relay's) and Native rows, deduplicated
    by token as a server does."""
    import gzip

    import lz4.frame

    ids = [uuid.uuid4() for _ in range(4)]
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)

    def block(event_id: uuid.UUID) -> bytes:
        return tsv_line(event_id, "ping", f"{now:%Y-%m-%d %H:%M:%S}")

    ch = clickhouse.connect(clickhouse_http.url)
    try:
        clickhouse.insert_tsv(ch, table=TABLE, block=block(ids[0]), token=str(ids[0]))
        clickhouse.insert_tsv(ch, table=TABLE, block=block(ids[0]), token=str(ids[0]))
        for codec, data in (
            ("gzip", gzip.compress(block(ids[1]))),
            ("lz4", lz4.frame.compress(block(ids[2]))),
        ):
            ch.raw_insert(
                TABLE,
                list(sql.RELAY_COLUMNS),
                insert_block=data,
                fmt="TabSeparated",
                compression=codec,
            )
        ch.insert(
            TABLE,
            [[ids[3], "ping", now, "test", "{}", 1]],
            column_names=[
                "event_id",
                "event_type",
                "event_date_time",
                "environment",
                "event_context",
                "metadata_version",
            ],
        )
    finally:
        ch.close()

    assert_exactly_once(clickhouse_http.probe, ids)


# -- what errors mean, read from real HTTP answers -----------------------------


def _block() -> bytes:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return tsv_line(uuid.uuid4(), "ping", now)


def _insert_error(url: str, block: bytes, *, timeout: float = 5.0) -> ClickHouseError:
    ch = clickhouse.connect(url, timeout=timeout)
    try:
        with pytest.raises(ClickHouseError) as raised:
            clickhouse.insert_tsv(ch, table=TABLE, block=block, token=str(uuid.uuid4()))
    finally:
        ch.close()
    return raised.value


def test_a_5xx_with_a_clickhouse_code_over_http_is_transient_and_keeps_its_code(clickhouse_http):
    clickhouse_http.arm(
        ServerError(match=inserts_into(TABLE), status=500, code=252, name="TOO_MANY_PARTS")
    )

    error = _insert_error(clickhouse_http.url, _block())

    assert error.code == 252
    assert error.transient


def test_a_503_without_a_code_over_http_is_transient(clickhouse_http):
    clickhouse_http.arm(
        ProxyStatus(match=inserts_into(TABLE), status=503, body="Service Unavailable\n")
    )

    error = _insert_error(clickhouse_http.url, _block())

    assert error.code is None
    assert error.transient


def test_an_insert_timeout_over_http_is_transient(clickhouse_http):
    clickhouse_http.arm(Delay(match=inserts_into(TABLE), seconds=2.5))

    error = _insert_error(clickhouse_http.url, _block(), timeout=1.0)

    assert error.transient


def test_a_dropped_connection_over_http_is_transient(clickhouse_http):
    clickhouse_http.arm(DropBeforeBody(match=inserts_into(TABLE), times=2))

    error = _insert_error(clickhouse_http.url, _block())

    assert error.transient


def test_rows_the_engine_refuses_over_http_are_a_data_error(clickhouse_http):
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    not_json = tsv_line(uuid.uuid4(), "ping", now, "{oops")
    not_a_date = tsv_line(uuid.uuid4(), "ping", "yesterday")

    constraint = _insert_error(clickhouse_http.url, not_json)
    parse = _insert_error(clickhouse_http.url, not_a_date)

    assert constraint.code == 469
    assert not constraint.transient
    assert parse.code is not None
    assert not parse.transient, f"code {parse.code} should be a data error"


def test_an_unknown_table_over_http_is_transient(clickhouse_http):
    ch = clickhouse.connect(clickhouse_http.url)
    try:
        with pytest.raises(ClickHouseError) as raised:
            clickhouse.insert_tsv(
                ch, table="no_such_table", block=_block(), token=str(uuid.uuid4())
            )
    finally:
        ch.close()

    assert raised.value.code == 60
    assert raised.value.transient


def test_a_proxy_413_over_http_is_not_transient(clickhouse_http):
    clickhouse_http.arm(ProxyStatus(match=inserts_into(TABLE), status=413))

    error = _insert_error(clickhouse_http.url, _block())

    assert not error.transient


# -- several relay processes sharing one engine ----------------------------------


def test_relay_processes_sharing_one_engine_over_http_deliver_each_event_once(
    clickhouse_http, process_env
):
    published = publish_pings(20_000)
    env = {
        "EVENT_LOG_BATCH_SIZE": "400",
        "EVENT_LOG_LEASE_SECONDS": "1",
        "EVENT_LOG_RELAY_INTERVAL": "0.1",
        "EVENT_LOG_BACKOFF_INITIAL": "0.05",
        "EVENT_LOG_BACKOFF_MAX": "0.3",
        "EVENT_LOG_INSERT_TIMEOUT": "1",
    }
    rng = random.Random(20261130)
    # Faults spread over the drain: answers lost after landing, inserts that land
    # after their relay gave up (and its lease ran out), 5xx, slow answers.
    clickhouse_http.arm(
        DropAfterExecute(match=lambda r: r.insert_table == TABLE and rng.random() < 0.1, times=8)
    )
    late = clickhouse_http.arm(
        LateExecute(
            match=lambda r: r.insert_table == TABLE and rng.random() < 0.1, times=4, seconds=1.5
        )
    )
    clickhouse_http.arm(
        ServerError(
            match=lambda r: r.insert_table == TABLE and rng.random() < 0.1,
            times=8,
            code=252,
            name="TOO_MANY_PARTS",
        )
    )
    clickhouse_http.arm(
        Delay(match=lambda r: r.insert_table == TABLE and rng.random() < 0.2, times=20, seconds=0.2)
    )
    relays = [
        relay_process(process_env, env={**env, "CLICKHOUSE_URL": clickhouse_http.url})
        for _ in range(3)
    ]
    try:
        wait_until(
            lambda: not OutboxEvent.objects.exists() and not OutboxBatch.objects.exists(),
            timeout=180,
            interval=0.2,
        )
    finally:
        for proc in relays:
            proc.send_signal(signal.SIGTERM)
        for proc in relays:
            proc.wait(30)

    assert all(proc.returncode == 0 for proc in relays)
    faults = {o.fault for o in clickhouse_http.front.outcomes if o.fault}
    assert {"DropAfterExecute", "ServerError"} <= faults, "the faults met the relays"
    # Inserts that land late are in flight still: let them land (under used tokens).
    wait_until(lambda: len(insert_faults(clickhouse_http, "LateExecute")) == late.hits, timeout=30)
    assert_exactly_once(clickhouse_http.probe, published)


def test_relay_processes_killed_at_random_moments_over_http_lose_and_duplicate_nothing(
    clickhouse_http, process_env
):
    published = publish_pings(20_000)
    env = {
        "EVENT_LOG_BATCH_SIZE": "100",
        "EVENT_LOG_LEASE_SECONDS": "1",
        "EVENT_LOG_RELAY_INTERVAL": "0.1",
    }
    kills_mid_drain = kill_relays_at_random(
        process_env,
        {**env, "CLICKHOUSE_URL": clickhouse_http.url},
        seed=20261201,
        rounds=25,
        relays=2,
        longest_life=0.3,
        enough=5,
    )
    assert kills_mid_drain >= 3, "the kills should land while relays are draining"

    time.sleep(1.1)  # the leases of the killed relays run out
    report = relay_over(clickhouse_http, time_budget=120)

    assert report.drained
    assert OutboxBatch.objects.count() == 0
    assert_exactly_once(clickhouse_http.probe, published)


def test_two_relays_in_threads_over_http_racing_on_expired_leases_deliver_each_event_once(
    clickhouse_http,
):
    published = publish_pings(6_000)
    sealer = Relay(config=fast_config(BATCH_SIZE=500), clickhouse_url=clickhouse_http.url)
    while sealer.claim() is not None:
        pass  # sealed, never sent: as if 12 relays had died
    OutboxBatch.objects.update(lease_until=datetime(2000, 1, 1, tzinfo=UTC))
    reports = []

    def relay() -> None:
        try:
            reports.append(relay_over(clickhouse_http, BATCH_SIZE=500))
        finally:
            connection.close()

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert sum(r.batches for r in reports) == 12
    assert_exactly_once(clickhouse_http.probe, published)
