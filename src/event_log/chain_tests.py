"""The batch chain: tampering with ClickHouse or with the ledger is found and named
(which batch, which event id, which kind); an untouched log verifies clean, whatever
crashed, however many relays ran, after dead letters, replays and erasures."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from structlog.testing import capture_logs

from conftest import (
    assert_exactly_once,
    fast_config,
    insert_outbox_rows,
    insert_poison_row,
    kill_relays_at_random,
    publish_pings,
    relay_process,
)
from event_log import chain, clickhouse, publish, sql
from event_log import verify as verify_module
from event_log.dead_letters import dead_letters_replay
from event_log.erasure import event_log_erase
from event_log.models import ChainEntry, ChainHead, DeadLetter
from event_log.relay import Relay, run_relay
from event_log.verify import VerifyReport, chain_head, record_verification, verify_log
from users.events import UserCreated

pytestmark = pytest.mark.django_db(transaction=True)

EXIT_FINDINGS = 3
# The event's own columns, for rows written by hand (the envelope keeps its default).
EVENT_COLUMNS = (
    "event_id, event_type, event_date_time, environment, event_context, metadata_version"
)


def verify(url: str | None = None, **window: datetime) -> VerifyReport:
    return verify_log(since=window.get("since", datetime.now(UTC) - timedelta(hours=1)), url=url)


def entries() -> list[ChainEntry]:
    return list(ChainEntry.objects.order_by("position"))


def batch_of(event_id: uuid.UUID) -> uuid.UUID:
    for entry in entries():
        if entry.kind == chain.DELIVERY and event_id in dict(chain.unpack(entry.row_digests)):
            assert entry.batch_id is not None
            return entry.batch_id
    raise AssertionError(f"{event_id} is in no delivery entry")


def assert_clean(report: VerifyReport) -> None:
    assert report.chain is not None
    assert report.as_dict()["clean"], report.as_dict()


# -- what the relay records -------------------------------------------------------------


def test_each_finished_batch_is_one_entry_in_one_unbroken_chain(ch):
    published = publish_pings(1_100)

    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=500)))

    chained = entries()
    assert [e.position for e in chained] == [1, 2, 3]
    assert [e.kind for e in chained] == [chain.DELIVERY] * 3
    assert [e.rows for e in chained] == [500, 500, 100]
    ids = [event_id for e in chained for event_id, _ in chain.unpack(e.row_digests)]
    assert sorted(ids) == sorted(published)
    previous = chain.GENESIS
    for entry in chained:
        assert bytes(entry.prev_digest) == previous
        recomputed = chain.entry_digest(entry.kind, entry.batch_id, bytes(entry.row_digests))
        assert chain.link(previous, entry.position, recomputed) == bytes(entry.digest)
        previous = bytes(entry.digest)
    head = ChainHead.objects.get()
    assert (head.position, bytes(head.digest)) == (3, previous)
    rows = ch.query(f"SELECT event_id, batch_id FROM {ch.table}")
    assert dict(rows) == {
        event_id: e.batch_id for e in chained for event_id, _ in chain.unpack(e.row_digests)
    }
    copy = ch.query(f"SELECT position, digest FROM {ch.table}_batches ORDER BY position")
    assert copy == [(e.position, bytes(e.digest).hex()) for e in chained]


def test_row_digests_computed_by_clickhouse_equal_those_of_the_rows_the_relay_sent(ch):
    """The canonical text survives every escape: what ClickHouse holds hashes as sent."""
    times = [
        datetime(2026, 11, 30, 12, 0, 0, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 6, 15, 8, 30, 0, 500_000, tzinfo=UTC),
    ]
    contexts = [
        json.dumps({"name": "Zoë 🦊 日本語", "quote": 'it\'s "fine"'}, ensure_ascii=False),
        json.dumps({"text": "a\tb\nc\\d\re\bf\fg\vh"}),
        # Raw tabs, a newline and a carriage return between the tokens (valid JSON).
        '{"raw":\t"x",\n"n": "new\\nline",\r"back": "\\\\"}',
        json.dumps({"path": "C:\\\\dir\\\\file", "nul": "\\u0000"}),
    ]
    event_ids = insert_outbox_rows(times, contexts=contexts)
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE event_log_outbox SET metadata_version = %s WHERE event_id = %s",
            [2**63 - 1, event_ids[0]],
        )
        # The envelope's text goes through the same escapes (one row keeps it empty).
        cur.execute(
            "UPDATE event_log_outbox SET actor_type = 'user', actor_id = %s, "
            "subject_type = 'user', subject_id = %s, request_id = %s, traceparent = %s "
            "WHERE event_id = ANY(%s)",
            [
                "a\tb\\c",
                "Zoë 🦊\n42",
                "req-\r\b\f\v",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                event_ids[1:],
            ],
        )

    run_relay()

    [entry] = entries()
    sent = dict(chain.unpack(entry.row_digests))
    assert set(sent) == set(event_ids)
    held = {
        row[0]: row[1]
        for row in ch.query(f"SELECT event_id, {sql.row_digest_sql()} FROM {ch.table}")
    }
    assert held == sent
    envelopes = {tuple(row) for row in ch.query(f"SELECT actor_id, subject_id FROM {ch.table}")}
    assert envelopes == {("", ""), ("a\tb\\c", "Zoë 🦊\n42")}
    assert_clean(verify(since=datetime.now(UTC) - timedelta(minutes=5)))


def test_dead_letters_and_their_replay_are_entries_of_the_chain(ch):
    published = publish_pings(20)
    poison = insert_poison_row()

    run_relay()
    letter = DeadLetter.objects.get()
    letter.event_context = '{"n": 1, "fixed": true}'
    letter.save()
    dead_letters_replay(ids=[letter.id])
    run_relay()

    kinds = [(e.kind, e.rows) for e in entries()]
    assert kinds == [
        (chain.DELIVERY, 20),
        (chain.DEAD_LETTER, 1),
        (chain.REPLAY, 1),
        (chain.DELIVERY, 1),
    ]
    dead, replay = entries()[1:3]
    assert [event_id for event_id, _ in chain.unpack(dead.row_digests)] == [poison]
    assert [event_id for event_id, _ in chain.unpack(replay.row_digests)] == [poison]
    assert_exactly_once(ch, [*published, poison])
    assert_clean(verify())


# -- tampering with ClickHouse ----------------------------------------------------------


def test_a_deleted_row_is_reported_missing_with_its_batch(ch):
    published = publish_pings(300)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    victim = published[150]
    ch.command(f"DELETE FROM {ch.table} WHERE event_id = '{victim}'")

    report = verify()

    assert report.missing == {victim}
    assert report.missing_batches == {victim: batch_of(victim)}
    assert (report.altered, report.extra, report.duplicated) == ({}, {}, {})
    assert report.chain is not None and report.chain.breaks == []


def test_an_altered_context_is_reported_with_its_event_id_and_batch(ch):
    published = publish_pings(300)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    victim = published[42]
    ch.command(
        f"ALTER TABLE {ch.table} UPDATE event_context = '{{\"n\": 4200}}' "
        f"WHERE event_id = '{victim}' SETTINGS mutations_sync = 2"
    )

    report = verify()

    assert report.altered == {victim: batch_of(victim)}
    assert (report.missing, report.extra, report.duplicated) == (set(), {}, {})


def test_a_row_moved_to_another_batch_is_reported_altered(ch):
    published = publish_pings(200)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    victim, other = published[10], published[150]
    ch.command(
        f"ALTER TABLE {ch.table} UPDATE batch_id = toUUID('{batch_of(other)}') "
        f"WHERE event_id = '{victim}' SETTINGS mutations_sync = 2"
    )

    report = verify()

    assert report.altered == {victim: batch_of(victim)}
    assert report.missing == set()


def test_a_forged_row_is_reported_extra_with_the_batch_it_claims(ch):
    publish_pings(100)
    run_relay()
    forged, claimed = uuid.uuid4(), ChainEntry.objects.get().batch_id
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    ch.command(
        f"INSERT INTO {ch.table} ({EVENT_COLUMNS}, batch_id) VALUES "
        f"('{forged}', 'ping', '{now}', 'test', '{{\"n\": -1}}', 1, '{claimed}')"
    )
    unchained = uuid.uuid4()
    ch.command(
        f"INSERT INTO {ch.table} ({EVENT_COLUMNS}) VALUES "
        f"('{unchained}', 'ping', '{now}', 'test', '{{\"n\": -2}}', 1)"
    )

    report = verify()

    assert report.extra == {forged: claimed, unchained: chain.NIL}
    assert (report.missing, report.altered, report.duplicated) == (set(), {}, {})


def test_a_duplicated_row_is_reported_with_its_copies(ch):
    published = publish_pings(100)
    run_relay()
    victim = published[99]
    ch.command(
        f"INSERT INTO {ch.table} SETTINGS insert_deduplicate = 0 "
        f"SELECT * FROM {ch.table} WHERE event_id = '{victim}'"
    )

    report = verify()

    assert report.duplicated == {victim: 2}
    assert (report.missing, report.altered, report.extra) == (set(), {}, {})


def test_rows_of_a_batch_still_in_flight_are_not_extra(ch):
    """ClickHouse holds a batch's rows before its finish appends the entry."""
    publish_pings(50)
    run_relay()
    publish_pings(30)
    relay = Relay(config=fast_config())
    batch = relay.claim()
    assert batch is not None
    relay.write(batch)
    try:
        report = verify()
    finally:
        relay.close()

    assert_clean(report)
    assert report.extra == {}


def test_rows_older_than_the_chain_are_counted_not_reported(ch):
    old = uuid.uuid4()
    ch.command(
        f"INSERT INTO {ch.table} ({EVENT_COLUMNS}) VALUES "
        f"('{old}', 'ping', now64(6) - INTERVAL 10 MINUTE, 'test', '{{}}', 1)"
    )
    time.sleep(0.01)
    publish_pings(10)
    run_relay()

    report = verify()

    assert_clean(report)
    assert report.chain is not None and report.chain.unchained_rows == 1


@pytest.mark.parametrize("group_events", [150, 100_000])
def test_rows_are_checked_group_by_group_with_the_same_findings(ch, monkeypatch, group_events):
    published = publish_pings(500)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    monkeypatch.setattr(verify_module, "CHAIN_GROUP_EVENTS", group_events)
    assert_clean(verify())
    victim, forged, claiming = published[250], uuid.uuid4(), uuid.uuid4()
    ch.command(f"DELETE FROM {ch.table} WHERE event_id = '{victim}'")
    ch.command(
        f"INSERT INTO {ch.table} ({EVENT_COLUMNS}) VALUES "
        f"('{forged}', 'ping', now64(6) + INTERVAL 1 HOUR, 'test', '{{}}', 1)"
    )
    # A forged row claiming a batch of the first group, at a time of the last one's.
    first, last = entries()[0], entries()[-1]
    at = last.first_event_at.strftime("%Y-%m-%d %H:%M:%S.%f")
    ch.command(
        f"INSERT INTO {ch.table} ({EVENT_COLUMNS}, batch_id) VALUES "
        f"('{claiming}', 'ping', '{at}', 'test', '{{}}', 1, '{first.batch_id}')"
    )

    report = verify_log(
        since=datetime.now(UTC) - timedelta(hours=1), until=datetime.now(UTC) + timedelta(hours=2)
    )

    assert report.missing == {victim}
    assert report.extra == {forged: chain.NIL, claiming: first.batch_id}
    assert (report.altered, report.duplicated) == ({}, {})


# -- tampering with the ledger -----------------------------------------------------------


def test_a_rewritten_ledger_entry_breaks_the_chain_at_its_position(ch):
    published = publish_pings(300)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    # The tamperer deletes a row and hides it: the entry no longer lists it.
    victim = published[120]
    ch.command(f"DELETE FROM {ch.table} WHERE event_id = '{victim}'")
    entry = ChainEntry.objects.get(position=2)
    pairs = [p for p in chain.unpack(entry.row_digests) if p[0] != victim]
    ChainEntry.objects.filter(position=2).update(row_digests=chain.pack(pairs), rows=len(pairs))

    report = verify()

    assert report.chain is not None
    assert [(b.position, b.batch_id) for b in report.chain.breaks] == [(2, entry.batch_id)]
    assert "rewritten" in report.chain.breaks[0].problem
    assert report.missing == {victim}, "the delivery records still name the row"


def test_a_ledger_rewritten_consistently_is_caught_by_the_clickhouse_copy(ch):
    published = publish_pings(200)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    victim = published[150]
    ch.command(f"DELETE FROM {ch.table} WHERE event_id = '{victim}'")
    # Entry 2 and the head recomputed, as someone with write access to PostgreSQL could.
    entry = ChainEntry.objects.get(position=2)
    pairs = [p for p in chain.unpack(entry.row_digests) if p[0] != victim]
    row_digests = chain.pack(pairs)
    digest = chain.link(
        bytes(entry.prev_digest), 2, chain.entry_digest(entry.kind, entry.batch_id, row_digests)
    )
    ChainEntry.objects.filter(position=2).update(
        row_digests=row_digests,
        rows=len(pairs),
        entry_digest=chain.entry_digest(entry.kind, entry.batch_id, row_digests),
        digest=digest,
    )
    ChainHead.objects.update(digest=digest)

    report = verify()

    assert report.chain is not None
    assert [b.position for b in report.chain.breaks] == [2]
    assert "ClickHouse's copy" in report.chain.breaks[0].problem


def test_a_deleted_ledger_entry_is_a_gap(ch):
    publish_pings(300)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    ChainEntry.objects.filter(position=3).delete()

    report = verify()

    assert report.chain is not None
    assert {b.position for b in report.chain.breaks} >= {3}
    assert any("head" in b.problem for b in report.chain.breaks)


def test_a_lost_clickhouse_copy_is_written_by_the_verification(ch):
    publish_pings(200)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    ch.command(f"TRUNCATE TABLE {ch.table}_batches")

    first = verify()
    second = verify()

    assert_clean(first)
    assert first.chain is not None and first.chain.copied == 2
    assert second.chain is not None and second.chain.copied == 0
    copy = ch.query(f"SELECT position, digest FROM {ch.table}_batches ORDER BY position")
    assert copy == [(e.position, bytes(e.digest).hex()) for e in entries()]


# -- erasure and retention ---------------------------------------------------------------


def test_an_erasure_is_an_entry_and_the_log_verifies_clean_after_it(ch):
    with transaction.atomic():
        mine = publish(
            *(
                UserCreated(user_id=7, email=f"u7.{n}@example.com", first_name="A", last_name="B")
                for n in range(3)
            )
        )
        publish(UserCreated(user_id=8, email="u8@example.com", first_name="C", last_name="D"))
    run_relay()

    event_log_erase(subject="user:7")
    run_relay()  # the SubjectErased event

    kinds = [e.kind for e in entries()]
    assert kinds == [chain.DELIVERY, chain.ERASURE, chain.DELIVERY]
    erasure = entries()[1]
    assert {event_id for event_id, _ in chain.unpack(erasure.row_digests)} == set(mine)
    assert_clean(verify())


def test_batches_older_than_the_retention_are_expired_not_missing(ch, settings):
    old = insert_outbox_rows([datetime.now(UTC) - timedelta(days=40)] * 3)
    run_relay()
    recent = publish_pings(5)
    run_relay()
    ch.command(f"DELETE FROM {ch.table} WHERE event_id IN ({', '.join(repr(str(i)) for i in old)})")
    settings.EVENT_LOG = {**settings.EVENT_LOG, "RETENTION_DAYS": 30}

    report = verify()

    assert_clean(report)
    assert report.chain is not None and report.chain.expired_batches == 1
    ch.command(f"DELETE FROM {ch.table} WHERE event_id = '{recent[0]}'")
    assert verify().missing == {recent[0]}


def test_an_event_type_s_own_shorter_retention_expires_its_batches_too(ch, settings, monkeypatch):
    """Per-type TTL rules may remove a type's rows before the table's retention."""
    old = insert_outbox_rows([datetime.now(UTC) - timedelta(days=40)] * 3)
    run_relay()
    ch.command(f"DELETE FROM {ch.table} WHERE event_id IN ({', '.join(repr(str(i)) for i in old)})")
    settings.EVENT_LOG = {**settings.EVENT_LOG, "RETENTION_DAYS": 0}
    assert verify(since=datetime.now(UTC) - timedelta(hours=1)).missing == set(old)
    monkeypatch.setattr(verify_module, "retention_days_by_event_type", lambda: {"ping": 30})

    report = verify()

    assert_clean(report)
    assert report.chain is not None and report.chain.expired_batches == 1


# -- anchoring, the command ----------------------------------------------------------------


def test_head_prints_the_chain_head_and_each_verification_logs_it(ch, manage):
    publish_pings(150)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    last = entries()[-1]

    result = manage("event_log_verify", "--head")
    with capture_logs() as logs:
        record_verification(verify_log(since=datetime.now(UTC) - timedelta(hours=1)))

    assert result.returncode == 0, result.stderr
    head = json.loads(result.stdout)
    assert (head["position"], head["digest"]) == (2, bytes(last.digest).hex())
    assert head == chain_head()
    [seen] = [log for log in logs if log["event"] == "event_log_chain_head_seen"]
    assert (seen["position"], seen["digest"]) == (2, head["digest"])


def test_the_command_names_each_finding_and_exits_3(ch, manage):
    published = publish_pings(200)
    run_relay(relay=Relay(config=fast_config(BATCH_SIZE=100)))
    ch.command(
        f"ALTER TABLE {ch.table} UPDATE event_context = '{{}}' "
        f"WHERE event_id = '{published[5]}' SETTINGS mutations_sync = 2"
    )

    result = manage("event_log_verify", "--json")

    assert result.returncode == EXIT_FINDINGS, result.stderr
    report = json.loads(result.stdout)
    assert report["altered"] == {str(published[5]): str(batch_of(published[5]))}
    assert report["chain"]["head"]["position"] == 2
    assert report["chain"]["breaks"] == []


# -- many relays, crashes, a server --------------------------------------------------------


def test_relays_in_processes_over_http_make_one_chain_that_verifies(clickhouse_http, process_env):
    published = publish_pings(4_000)
    env = {
        **process_env,
        "CLICKHOUSE_URL": clickhouse_http.url,
        "EVENT_LOG_BATCH_SIZE": "100",
    }
    procs = [relay_process(env, "--once") for _ in range(3)]
    for proc in procs:
        # 3: it stopped while another relay still held a batch.
        assert proc.wait(timeout=120) in (0, 3)
    run_relay(relay=Relay(clickhouse_url=clickhouse_http.url))

    assert_exactly_once(clickhouse_http.probe, published)
    positions = [e.position for e in entries()]
    assert positions == list(range(1, len(positions) + 1))
    assert_clean(verify(url=clickhouse_http.url))


@pytest.mark.faults
def test_nothing_is_reported_after_relays_killed_at_random_moments(clickhouse_http, process_env):
    published = publish_pings(10_000)
    env = {
        "EVENT_LOG_BATCH_SIZE": "100",
        "EVENT_LOG_LEASE_SECONDS": "1",
        "EVENT_LOG_RELAY_INTERVAL": "0.1",
        "CLICKHOUSE_URL": clickhouse_http.url,
    }
    kills_mid_drain = kill_relays_at_random(
        process_env, env, seed=20261130, rounds=25, relays=2, longest_life=0.3, enough=5
    )
    assert kills_mid_drain >= 3, "the kills should land while relays are draining"
    time.sleep(1.1)
    run_relay(relay=Relay(clickhouse_url=clickhouse_http.url), time_budget=120)
    assert_exactly_once(clickhouse_http.probe, published)

    report = verify(url=clickhouse_http.url)

    assert_clean(report)
    delivered = [
        event_id
        for e in entries()
        if e.kind == chain.DELIVERY
        for event_id, _ in chain.unpack(e.row_digests)
    ]
    assert sorted(delivered) == sorted(published), "each delivered row is in one entry"


def test_the_clickhouse_copy_insert_failing_leaves_the_batch_delivered(ch, monkeypatch):
    published = publish_pings(50)

    def refuse(*args, **kwargs):
        raise clickhouse.ClickHouseError("the copy's table is gone", code=60)

    monkeypatch.setattr(chain, "copy_to_clickhouse", refuse)
    with capture_logs() as logs:
        report = run_relay()
    monkeypatch.undo()

    assert (report.delivered, report.failures) == (50, 0)
    assert any(log["event"] == "chain_entry_copy_failed" for log in logs)
    assert_exactly_once(ch, published)
    verified = verify()
    assert_clean(verified)
    assert verified.chain is not None and verified.chain.copied == 1


def test_the_canonical_text_undoes_only_what_copy_escapes_beyond_tab_newline_backslash():
    row = b"a\\r\\b\\f\\v\tb\\\\N\\t\\n\\\\\t\\N\tc"

    assert chain.canonical_rows([row]) == [b"a\r\b\f\v\tb\\\\N\\t\\n\\\\\t\tc"]


def test_many_rows_take_the_canonical_text_each_would_take_alone():
    batch = uuid.uuid4()
    ids = sorted(uuid.uuid4() for _ in range(4))
    # COPY text: NULLs (\N) first, last and side by side; an escaped backslash before
    # an N and at a field's end; the escapes that become raw, and \N after an escaped
    # backslash; a row without any.
    texts = [
        "\\N\tx\t\\N\t\\N",
        "\\\\N\t\\N\tb\\\\\t\\N",
        "a\\r\\b\\f\\v\\t\t\\N\t\\\\\\N",
        "plain\ttext",
    ]
    canonical = [
        b"\tx\t\t",
        b"\\\\N\t\tb\\\\\t",
        b"a\r\b\f\v\\t\t\t\\\\",
        b"plain\ttext",
    ]
    lines = [f"{i}\t{text}\t{batch}\n".encode() for i, text in zip(ids, texts, strict=True)]
    expected = [f"{i}\t".encode() + row for i, row in zip(ids, canonical, strict=True)]

    rows = [line[: -len(f"\t{batch}\n")] for line in lines]
    assert chain.canonical_rows(rows) == expected
    assert [chain.canonical_rows([row])[0] for row in rows] == expected
    assert chain.pairs_of(lines) == chain.pack(
        (i, hashlib.sha256(row).digest()) for i, row in zip(ids, expected, strict=True)
    )
