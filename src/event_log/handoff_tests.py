"""The hand-off from PostgreSQL to ClickHouse does not depend on session settings.

Whatever a role, a database, ``postgresql.conf`` or ``PGDATESTYLE`` sets on the
relay's PostgreSQL session, and whatever a ClickHouse profile sets for its inserts,
every event arrives with the exact time it was published at, or is dead-lettered;
none is skipped, and the seal is durable.
"""

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial

import pytest
from django.db import connection

from conftest import (
    assert_exactly_once,
    fast_config,
    insert_outbox_rows,
    insert_poison_row,
    publish_pings,
)
from event_log import clickhouse
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent
from event_log.relay import Relay

pytestmark = pytest.mark.django_db(transaction=True)

# Times where reading day for month (or month for day) would go unnoticed or fail.
TIMES = [
    datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    datetime(2025, 12, 11, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2025, 7, 4, 0, 0, 0, 1, tzinfo=UTC),
]


@pytest.fixture
def relay_session() -> Iterator[None]:
    """The relay's own session (this thread's connection), closed after the test so
    no setting made on it reaches another test."""
    yield
    connection.close()


def set_session(*statements: str) -> None:
    with connection.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def stored_times(ch) -> dict:
    return {
        event_id: at.replace(tzinfo=UTC) if at.tzinfo is None else at
        for event_id, _, at, *_ in ch.rows()
    }


def with_profile(monkeypatch: pytest.MonkeyPatch, **profile: object) -> None:
    """Every ClickHouse client carries ``profile`` as its own settings, as a server's
    user profile would apply them to every query of the relay's user."""
    monkeypatch.setattr(clickhouse, "connect", partial(clickhouse.connect, settings=profile))


@pytest.mark.parametrize(
    "session",
    [
        ("SET DateStyle = 'SQL, MDY'",),
        ("SET DateStyle = 'SQL, DMY'",),
        ("SET DateStyle = 'German'",),
        ("SET DateStyle = 'Postgres, MDY'",),
        ("SET DateStyle = 'ISO, DMY'", "SET TimeZone = 'Pacific/Kiritimati'"),
        ("SET TimeZone = 'America/St_Johns'", "SET IntervalStyle = 'sql_standard'"),
    ],
    ids=["sql-mdy", "sql-dmy", "german", "postgres-mdy", "iso-dmy-utc+14", "utc-3:30"],
)
def test_event_times_arrive_exactly_whatever_the_relay_sessions_datestyle(
    ch, relay_session, session
):
    event_ids = insert_outbox_rows(TIMES)
    set_session(*session)

    report = Relay(config=fast_config()).run()

    assert report.delivered == len(TIMES)
    assert DeadLetter.objects.count() == 0
    assert stored_times(ch) == dict(zip(event_ids, TIMES, strict=True))
    assert_exactly_once(ch, event_ids)


def test_a_profile_reading_times_best_effort_cannot_swap_day_and_month(
    ch, relay_session, monkeypatch
):
    """'SQL, MDY' text read best effort is 1 February for 2 January, silently: the relay
    sends an unambiguous text and pins how ClickHouse reads it."""
    event_ids = insert_outbox_rows(TIMES)
    set_session("SET DateStyle = 'SQL, MDY'")
    with_profile(monkeypatch, date_time_input_format="best_effort")

    Relay(config=fast_config()).run()

    assert stored_times(ch) == dict(zip(event_ids, TIMES, strict=True))


def test_a_profile_that_allows_errors_cannot_make_clickhouse_skip_a_bad_row(
    ch, relay_session, monkeypatch
):
    """A row ClickHouse cannot parse is dead-lettered, never dropped with the batch deleted."""
    published = publish_pings(50)
    # Year 10000: PostgreSQL takes it, ClickHouse's text format cannot parse it.
    [unparsable] = insert_outbox_rows(["10000-01-01 00:00:00+00"])
    published += publish_pings(49)
    with_profile(monkeypatch, input_format_allow_errors_num=10, input_format_allow_errors_ratio=0.5)

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run(time_budget=5)

    assert (report.delivered, report.dead_lettered) == (99, 1)
    assert_exactly_once(ch, published)
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {unparsable}
    assert OutboxEvent.objects.count() == 0


def test_an_event_dated_after_9999_is_dead_lettered_and_the_rest_of_its_batch_delivered(
    ch, relay_session
):
    """Its time has no text ClickHouse can read: it must not wedge its batch's lookup."""
    published = publish_pings(20)
    [too_late] = insert_outbox_rows(["10000-01-01 00:00:00+00"])

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run(time_budget=5)

    assert report.dead_lettered == 1
    assert_exactly_once(ch, published)
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {too_late}
    assert OutboxBatch.objects.count() == 0


def test_a_profile_that_allows_errors_cannot_hide_a_row_its_check_refuses(
    ch, relay_session, monkeypatch
):
    published = publish_pings(30)
    poison = insert_poison_row()
    with_profile(monkeypatch, input_format_allow_errors_num=10, input_format_allow_errors_ratio=0.5)

    Relay(config=fast_config(BATCH_SIZE=1_000)).run()

    assert_exactly_once(ch, published)
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {poison}


def test_an_event_at_infinity_is_dead_lettered_not_stored_at_the_epoch(ch, relay_session):
    """PostgreSQL formats an infinite time as NULL; ClickHouse must not read it as 1970."""
    published = publish_pings(10)
    [infinite] = insert_outbox_rows(["infinity"])

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run(time_budget=5)

    assert report.dead_lettered == 1
    assert_exactly_once(ch, published)
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {infinite}


def test_an_event_dated_before_the_common_era_is_dead_lettered_not_moved_to_the_common_era(
    ch, relay_session
):
    """PostgreSQL formats 44 BC as year 0044 unless told the era: ClickHouse would store 44 AD."""
    published = publish_pings(10)
    [before_year_1] = insert_outbox_rows(["0044-03-15 12:00:00+00 BC"])

    report = Relay(config=fast_config(BATCH_SIZE=1_000)).run(time_budget=5)

    assert report.dead_lettered == 1
    assert_exactly_once(ch, published)
    assert set(DeadLetter.objects.values_list("event_id", flat=True)) == {before_year_1}


@contextlib.contextmanager
def commit_probe(table: str) -> Iterator[None]:
    """Records the ``synchronous_commit`` in force in each transaction that inserts into
    ``table`` (a trigger), so the test sees what PostgreSQL sees, not what the code says."""
    with connection.cursor() as cur:
        cur.execute(
            "CREATE TABLE commit_probe (setting text);"
            "CREATE FUNCTION commit_probe_record() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO commit_probe"
            " VALUES (current_setting('synchronous_commit')); RETURN NEW; END $$;"
            f"CREATE TRIGGER commit_probe AFTER INSERT ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION commit_probe_record();"
        )
    try:
        yield
    finally:
        connection.close()
        with connection.cursor() as cur:
            cur.execute(
                f"DROP TRIGGER IF EXISTS commit_probe ON {table};"
                "DROP FUNCTION IF EXISTS commit_probe_record();"
                "DROP TABLE IF EXISTS commit_probe;"
            )


@pytest.fixture
def seal_commit_probe() -> Iterator[None]:
    with commit_probe("event_log_batch"):
        yield


def _probed_settings() -> tuple[list[str], str]:
    """The settings the probe recorded, and this session's own after the run."""
    with connection.cursor() as cur:
        cur.execute("SELECT setting FROM commit_probe")
        recorded = [row[0] for row in cur.fetchall()]
        cur.execute("SHOW synchronous_commit")
        return recorded, cur.fetchone()[0]


def test_the_seal_commits_durably_when_the_session_turns_synchronous_commit_off(
    ch, seal_commit_probe
):
    published = publish_pings(30)
    set_session("SET synchronous_commit = off")

    Relay(config=fast_config(BATCH_SIZE=10)).run()

    settings_at_seal, session_after = _probed_settings()
    assert settings_at_seal == ["on", "on", "on"]
    assert session_after == "off", "only the seal's transaction is changed"
    assert OutboxBatch.objects.count() == 0
    assert_exactly_once(ch, published)


def test_the_fast_finish_skips_the_flush_for_itself_only(ch):
    """The one-statement finish (FINISH_BATCH) commits without waiting for the disk, and
    leaves the session's own setting as it found it, on either connection."""
    published = publish_pings(30)

    with commit_probe("event_log_chain"):
        report = Relay(config=fast_config(BATCH_SIZE=10)).run()
        settings_at_finish, session_after = _probed_settings()

    assert report.batches == 3
    assert settings_at_finish == ["off", "off", "off"], "one chain entry per finish"
    assert session_after == "on"
    assert OutboxBatch.objects.count() == 0
    assert_exactly_once(ch, published)
