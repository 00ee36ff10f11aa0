"""The ClickHouse table: fit for exactly-once and durable, repaired, refused, or converted.

Tests that need a table in a given state make it under a name of their own in the
session's engine (or a database of their own) and drop it afterwards; the shared
``event_log`` table is only read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from structlog.testing import capture_logs

from conftest import publish_pings
from event_log import clickhouse, schema, sql
from event_log.conf import event_log_settings
from event_log.relay import Relay, run_relay
from event_log.schema import ddl, legacy, verify

# A table of the current shape made by hand: every column the relay inserts.
COLUMNS = (
    "(" + ", ".join(f"{name} {kinds[0]}" for name, kinds in verify.REQUIRED_COLUMNS.items()) + ")"
)
MERGE_TREE = (
    "MergeTree PARTITION BY toYYYYMM(event_date_time) ORDER BY (event_type, event_date_time)"
)
# The previous service's DDL, as it created its table.
LEGACY_DDL = """CREATE TABLE {table} (event_type String, event_date_time {time_type},
    environment String, event_context String, metadata_version Int32 DEFAULT 1)
    ENGINE = MergeTree PARTITION BY toYYYYMM(event_date_time)
    ORDER BY (event_date_time, event_type)"""


@pytest.fixture
def client(clickhouse_url: str) -> Iterator[Client]:
    with clickhouse.client(clickhouse_url) as ch:
        yield ch


@pytest.fixture
def scratch(clickhouse_url: str) -> Iterator[Any]:
    """Names for tables of the test's own in the session database, dropped at the end
    (with whatever the conversion left under derived names)."""
    names: list[str] = []

    def name() -> str:
        names.append(f"t_{uuid.uuid4().hex[:10]}")
        return names[-1]

    yield name
    with clickhouse.client(clickhouse_url) as ch:
        for prefix in names:
            for table in tables_like(ch, prefix):
                ch.command(f"DROP TABLE IF EXISTS `{table}`")


def engine_full(ch: Client, table: str) -> str:
    return str(
        ch.query(
            "SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
            "AND name = %(t)s",
            parameters={"t": table},
        ).result_rows[0][0]
    )


def table_settings(ch: Client, table: str) -> dict[str, str]:
    return verify.parse_settings(engine_full(ch, table))


# -- the deduplication window and fsync ----------------------------------------------


def test_the_event_table_deduplicates_and_fsyncs_every_insert(client):
    found = table_settings(client, event_log_settings().CLICKHOUSE_TABLE)

    assert int(found["non_replicated_deduplication_window"]) >= schema.DEDUP_WINDOW_MIN
    assert found["fsync_after_insert"] == "1"
    assert found["fsync_part_directory"] == "1"


@pytest.mark.parametrize("window", ["", " SETTINGS non_replicated_deduplication_window = 100"])
def test_migrate_gives_an_existing_table_the_dedup_window_and_fsync_it_lacks(
    client, scratch, window
):
    table = scratch()
    client.command(f"CREATE TABLE {table} {COLUMNS} ENGINE = {MERGE_TREE}{window}")

    report = schema.apply_migrations(client, table=table)

    found = table_settings(client, table)
    assert found["non_replicated_deduplication_window"] == "10000"
    assert found["fsync_after_insert"] == "1"
    assert found["fsync_part_directory"] == "1"
    # The migrations ledger is the database's: on a table created by hand after it
    # recorded 0003, the retention pass repairs ttl_only_drop_parts too.
    assert {
        key: value for key, value in report.repaired.items() if key != "ttl_only_drop_parts"
    } == {
        "non_replicated_deduplication_window": "10000",
        "fsync_after_insert": "1",
        "fsync_part_directory": "1",
    }
    assert report.repaired.get("ttl_only_drop_parts", "1") == "1"
    assert schema.verify_table(client, table=table) == {}


def test_fsync_migration_turns_fsync_on_in_a_database_migrated_before_it(client):
    def settings_in(database: str) -> dict[str, str]:
        found = client.query(
            "SELECT engine_full FROM system.tables WHERE database = %(db)s AND name = 'event_log'",
            parameters={"db": database},
        ).result_rows
        return verify.parse_settings(str(found[0][0]))

    database = f"schema_test_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE `{database}`")
    try:
        first = ddl.migration_files()[0]
        for statement in ddl.render(first, database=database, table="event_log"):
            client.command(statement)
        client.command(
            f"CREATE TABLE `{database}`.schema_migrations (version String, applied_at "
            "DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = ReplacingMergeTree ORDER BY version"
        )
        client.command(
            f"INSERT INTO `{database}`.schema_migrations (version) VALUES ('{first.stem}')"
        )
        before = settings_in(database)

        report = schema.apply_migrations(client, database=database, table="event_log")

        after = settings_in(database)
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")
    assert "fsync_after_insert" not in before
    assert report.applied[:1] == ["0002_fsync_on_insert"]  # later files follow it
    assert report.repaired == {}
    assert (after["fsync_after_insert"], after["fsync_part_directory"]) == ("1", "1")


def test_the_envelope_migration_keeps_every_event_of_a_table_that_predates_it(client):
    database = f"schema_test_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE `{database}`")
    qualified = f"`{database}`.event_log"
    try:
        client.command(
            f"CREATE TABLE `{database}`.schema_migrations (version String, applied_at "
            "DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = ReplacingMergeTree ORDER BY version"
        )
        for path in ddl.migration_files():
            if path.stem >= "0004_envelope":
                break
            for statement in ddl.render(path, database=database, table="event_log"):
                client.command(statement)
            client.command(
                f"INSERT INTO `{database}`.schema_migrations (version) VALUES ('{path.stem}')"
            )
        client.command(
            f"INSERT INTO {qualified} SELECT generateUUIDv4(), 'ping', "
            "toDateTime64('2025-11-01 00:00:00', 6, 'UTC') + toIntervalSecond(number * 600), "
            "'test', concat('{\"n\":', toString(number), '}'), 1 FROM numbers(5000)"
        )
        before = {row[0] for row in client.query(f"SELECT event_id FROM {qualified}").result_rows}

        report = schema.apply_migrations(client, database=database, table="event_log")

        after = client.query(
            f"SELECT event_id, {', '.join(sql.ENVELOPE_COLUMNS)} FROM {qualified}"
        ).result_rows
        indexes = {
            row[0]
            for row in client.query(
                "SELECT name FROM system.data_skipping_indices WHERE database = %(db)s",
                parameters={"db": database},
            ).result_rows
        }
        verified = schema.verify_table(client, database=database, table="event_log")
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")
    assert report.applied == ["0004_envelope"] + [
        path.stem for path in ddl.migration_files() if path.stem > "0004_envelope"
    ]
    assert len(before) == 5000
    assert {row[0] for row in after} == before and len(after) == len(before)
    assert {row[1:] for row in after} == {("",) * len(sql.ENVELOPE_COLUMNS)}
    assert {"subject_lookup", "request_lookup", "actor_lookup"} <= indexes
    assert verified == {}


def test_the_batch_chain_migration_gives_a_populated_table_its_batch_id_column(client):
    database = f"schema_test_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE `{database}`")
    try:
        client.command(
            f"CREATE TABLE `{database}`.schema_migrations (version String, applied_at "
            "DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = ReplacingMergeTree ORDER BY version"
        )
        for path in ddl.migration_files():
            if path.stem >= "0005":
                break
            for statement in ddl.render(path, database=database, table="event_log"):
                client.command(statement)
            client.command(
                f"INSERT INTO `{database}`.schema_migrations (version) VALUES ('{path.stem}')"
            )
        old = uuid.uuid4()
        client.command(
            f"INSERT INTO `{database}`.event_log (event_id, event_type, event_date_time, "
            f"environment, event_context, metadata_version) VALUES ('{old}', 'ping', "
            "now64(6), 'test', '{}', 1)"
        )

        report = schema.apply_migrations(client, database=database, table="event_log")

        rows = client.query(f"SELECT event_id, batch_id FROM `{database}`.event_log").result_rows
        copies = client.command(f"SELECT count() FROM `{database}`.event_log_batches")
        again = schema.apply_migrations(client, database=database, table="event_log")
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")
    assert "0005_batch_chain" in report.applied
    assert rows == [(old, uuid.UUID(int=0))], "rows older than the chain have the nil batch"
    assert copies == 0
    assert not again.changed


def test_fsync_turned_off_explicitly_in_the_table_is_kept_and_logged(client, scratch):
    table = scratch()
    client.command(
        f"CREATE TABLE {table} {COLUMNS} ENGINE = {MERGE_TREE} SETTINGS "
        "non_replicated_deduplication_window = 10000, fsync_after_insert = 0, "
        "fsync_part_directory = 0"
    )

    with capture_logs() as logs:
        repaired = schema.verify_table(client, table=table)
        schema.ensure_table_ready(client, table=table)

    assert repaired == {}
    found = table_settings(client, table)
    assert (found["fsync_after_insert"], found["fsync_part_directory"]) == ("0", "0")
    off = [e for e in logs if e["event"] == "clickhouse_table_fsync_off"]
    assert {e["setting"] for e in off} == {"fsync_after_insert", "fsync_part_directory"}
    assert all(e["log_level"] == "warning" for e in off)


# -- refused tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "named"),
    [
        ("Log", "Log"),
        ("Memory", "Memory"),
        ("ReplacingMergeTree ORDER BY (event_type, event_date_time)", "ReplacingMergeTree"),
        ("SummingMergeTree ORDER BY (event_type, event_date_time)", "SummingMergeTree"),
    ],
)
def test_migrate_refuses_an_engine_that_cannot_keep_exactly_once_and_changes_nothing(
    client, scratch, engine, named
):
    table = scratch()
    client.command(f"CREATE TABLE {table} {COLUMNS} ENGINE = {engine}")
    before = engine_full(client, table)

    with pytest.raises(schema.TableNotReadyError) as refused:
        schema.apply_migrations(client, table=table)

    message = str(refused.value)
    assert f"`{table}`" in message
    assert f"engine is {named}" in message
    assert "MergeTree or ReplicatedMergeTree" in message
    assert engine_full(client, table) == before


def test_migrate_refuses_a_table_missing_a_column_and_changes_nothing(client, scratch):
    table = scratch()
    client.command(
        f"CREATE TABLE {table} (event_id UUID, event_type String, "
        "event_date_time DateTime64(6, 'UTC'), environment String, metadata_version UInt64) "
        f"ENGINE = {MERGE_TREE}"
    )

    with pytest.raises(schema.TableNotReadyError) as refused:
        schema.apply_migrations(client, table=table)

    assert "has no column event_context" in str(refused.value)
    assert "non_replicated_deduplication_window" not in table_settings(client, table)


def test_migrate_refuses_a_column_of_the_wrong_type(client, scratch):
    table = scratch()
    client.command(
        f"CREATE TABLE {table} (event_id UUID, event_type String, "
        "event_date_time DateTime64(3), environment String, event_context String, "
        f"metadata_version UInt64) ENGINE = {MERGE_TREE}"
    )

    with pytest.raises(schema.TableNotReadyError, match="event_date_time is DateTime64\\(3\\)"):
        schema.apply_migrations(client, table=table)


def test_clickhouse_migrate_exits_non_zero_with_one_line_naming_a_refused_table(
    client, scratch, manage
):
    table = scratch()
    client.command(f"CREATE TABLE {table} {COLUMNS} ENGINE = Log")
    client.close()  # the command's process must be able to open the embedded engine

    done = manage("clickhouse_migrate", env={"EVENT_LOG_CLICKHOUSE_TABLE": table})

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"`{table}`" in lines[0]
    assert "engine is Log" in lines[0]


def test_replicated_engines_are_accepted_and_their_window_raised_when_too_small():
    def shape(engine: str, window: str) -> verify.TableShape:
        return verify.TableShape(
            database="db",
            name="event_log",
            engine=engine,
            explicit_settings={"fsync_after_insert": "1", "fsync_part_directory": "1"},
            default_settings={"replicated_deduplication_window": window},
            columns={name: (kinds[0], "") for name, kinds in verify.REQUIRED_COLUMNS.items()},
        )

    for engine in ("ReplicatedMergeTree", "SharedMergeTree"):
        assert verify.assess(shape(engine, "10000")) == verify.Assessment({}, [], [])
        assert verify.assess(shape(engine, "100")).repairs == {
            "replicated_deduplication_window": "10000"
        }
    refused = verify.assess(shape("ReplicatedReplacingMergeTree", "10000"))
    assert refused.problems
    assert refused.repairs == {}


# -- the relay's check ------------------------------------------------------------------


def test_ensure_table_ready_refuses_a_window_it_does_not_repair_and_remembers_success(
    client, scratch, clickhouse_url
):
    table = scratch()
    client.command(f"CREATE TABLE {table} {COLUMNS} ENGINE = {MERGE_TREE}")

    with pytest.raises(schema.TableNotReadyError) as refused:
        schema.ensure_table_ready(client, table=table)
    assert "non_replicated_deduplication_window is 0" in str(refused.value)
    assert "clickhouse_migrate" in str(refused.value)
    assert "non_replicated_deduplication_window" not in table_settings(client, table)
    assert refused.value.transient

    schema.verify_table(client, table=table)
    schema.ensure_table_ready(client, table=table)
    client.command(f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = 0")
    schema.ensure_table_ready(client, table=table)  # remembered for this client

    with clickhouse.client(clickhouse_url) as other, pytest.raises(schema.TableNotReadyError):
        schema.ensure_table_ready(other, table=table)


def test_ensure_table_ready_accepts_the_migrated_event_table(client):
    schema.ensure_table_ready(client)


# -- the previous service's table -------------------------------------------------------

ROWS = 3_000
# Every 5,000 s from the last evening of January: six months, month edges included.
FILL = """INSERT INTO {table}
SELECT ['user_created', 'user_deleted', 'login'][number % 3 + 1],
       toDateTime64('2024-01-31 20:00:00', 6, 'UTC') + toIntervalMicrosecond(number * 5000000123),
       if(number % 7 = 0, 'staging', 'production'),
       concat('{{"n":', toString(number % 2500), ',"text":"tab\\\\there ünï"}}'),
       toInt32(1 + number % 3)
FROM numbers({rows})"""
DUPLICATES = "INSERT INTO {table} SELECT * FROM {table} WHERE metadata_version = 2 LIMIT 25"
CONTENT = """SELECT CAST(event_type AS String), toUnixTimestamp64Micro(event_date_time),
    CAST(environment AS String), event_context, toInt64(metadata_version) FROM {table}"""


def make_legacy(ch: Client, table: str, *, time_type: str = "DateTime64(6)") -> list[Any]:
    ch.command(LEGACY_DDL.format(table=table, time_type=time_type))
    ch.command(FILL.format(table=table, rows=ROWS))
    ch.command(DUPLICATES.format(table=table))  # identical rows, as retries of old left
    return content(ch, table)


def content(ch: Client, table: str) -> list[Any]:
    """Every row's old columns, duplicates kept, in a canonical order."""
    return sorted(ch.query(CONTENT.format(table=table)).result_rows)


def tables_like(ch: Client, prefix: str) -> list[str]:
    return sorted(
        str(row[0])
        for row in ch.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() "
            "AND startsWith(name, %(p)s)",
            parameters={"p": prefix},
        ).result_rows
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("time_type", ["DateTime64(6)", "DateTime64(6, 'Asia/Kolkata')"])
def test_migrate_converts_the_previous_services_table_keeping_every_row(
    client, scratch, clickhouse_url, time_type
):
    table = scratch()
    before = make_legacy(client, table, time_type=time_type)
    months = client.command(f"SELECT uniqExact(toYYYYMM(event_date_time, 'UTC')) FROM {table}")

    report = schema.apply_migrations(client, table=table)

    assert report.upgraded is not None
    assert report.upgraded.rows == len(before) == ROWS + 25
    assert report.upgraded.months == months >= 6
    assert content(client, table) == before
    ids = [row[0] for row in client.query(f"SELECT event_id FROM {table}").result_rows]
    assert len(set(ids)) == len(ids) == len(before)
    assert schema.verify_table(client, table=table) == {}
    assert legacy._comment(client, client.database or "default", table) == ""
    [kept] = [t for t in tables_like(client, table) if t not in (table, f"{table}_batches")]
    assert kept.startswith(f"{table}_legacy_")
    assert f"`{kept}`" in report.upgraded.legacy_table
    assert content(client, kept) == before
    # The old rows have an empty envelope (migration 0004's defaults).
    envelope = ", ".join(sql.ENVELOPE_COLUMNS)
    assert client.query(f"SELECT DISTINCT {envelope} FROM {table}").result_rows == [("",) * 6]

    # The relay delivers into the converted table.
    published = publish_pings(20)
    relay = Relay(config=event_log_settings(CLICKHOUSE_TABLE=table), clickhouse_url=clickhouse_url)
    run_relay(relay=relay)
    delivered = client.query(f"SELECT event_id FROM {table} WHERE event_type = 'ping'").result_rows
    assert sorted(row[0] for row in delivered) == sorted(published)

    again = schema.apply_migrations(client, table=table)
    assert not again.changed


def test_a_conversion_cut_short_mid_copy_is_finished_by_the_next_run_without_duplicates(
    client, scratch
):
    table = scratch()
    before = make_legacy(client, table)
    staging = f"{table}{legacy.STAGING_SUFFIX}"
    ddl.create_table(
        client,
        database=client.database or "default",
        table=staging,
        batches=ddl.chain_copy_table(table),
    )
    client.command(f"ALTER TABLE {staging} MODIFY COMMENT '{legacy.STAGING_COMMENT}'")
    # A first month copied whole, the second cut short (as a crash would leave them).
    first, second = sorted(
        row[0]
        for row in client.query(
            f"SELECT DISTINCT toYYYYMM(event_date_time, 'UTC') FROM {table}"
        ).result_rows
    )[:2]
    for month, limit in ((first, 1_000_000), (second, 100)):
        client.command(
            legacy.COPY_MONTH.format(staging=staging, legacy=table, month=month).replace(
                "SETTINGS", f"LIMIT {limit} SETTINGS"
            )
        )

    report = schema.apply_migrations(client, table=table)

    assert report.upgraded is not None
    assert report.upgraded.months_copied == report.upgraded.months - 1
    assert content(client, table) == before
    assert tables_like(client, staging) == []


def test_a_conversion_cut_short_after_the_swap_is_finished_by_the_next_run(client, scratch):
    table = scratch()
    before = make_legacy(client, table)
    staging = f"{table}{legacy.STAGING_SUFFIX}"
    ddl.create_table(
        client,
        database=client.database or "default",
        table=staging,
        batches=ddl.chain_copy_table(table),
    )
    client.command(
        f"INSERT INTO {staging} (event_id, event_type, event_date_time, environment, "
        "event_context, metadata_version) SELECT generateUUIDv4(), event_type, event_date_time, "
        f"environment, event_context, toUInt64(metadata_version) FROM {table}"
    )
    client.command(f"EXCHANGE TABLES {table} AND {staging}")

    report = schema.apply_migrations(client, table=table)

    assert report.upgraded is not None
    assert content(client, table) == before
    [kept] = [t for t in tables_like(client, table) if t not in (table, f"{table}_batches")]
    assert kept.startswith(f"{table}_legacy_")
    assert content(client, kept) == before


def test_a_previous_services_table_with_rows_the_new_one_refuses_is_left_untouched(client, scratch):
    table = scratch()
    before = make_legacy(client, table)
    client.command(
        f"INSERT INTO {table} VALUES ('login', '2024-03-01 00:00:00', 'production', 'not json', 1)"
    )

    with pytest.raises(schema.LegacyUpgradeError) as refused:
        schema.apply_migrations(client, table=table)

    assert "1 rows have an event_context that is not JSON" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert tables_like(client, table) == [table]
    assert len(content(client, table)) == len(before) + 1


def test_a_table_under_the_copys_name_that_is_not_the_copy_is_refused_and_kept(client, scratch):
    table = scratch()
    make_legacy(client, table)
    staging = f"{table}{legacy.STAGING_SUFFIX}"
    client.command(f"CREATE TABLE {staging} {COLUMNS} ENGINE = {MERGE_TREE}")
    client.command(
        f"INSERT INTO {staging} (event_id, event_type, event_date_time, environment, "
        "event_context, metadata_version) "
        "VALUES (generateUUIDv4(), 'login', now64(6), 'x', '{}', 1)"
    )

    with pytest.raises(schema.LegacyUpgradeError, match="is not a copy in progress"):
        schema.apply_migrations(client, table=table)

    assert client.command(f"SELECT count() FROM {staging}") == 1
    assert tables_like(client, table) == [table, staging]


def test_the_relays_check_points_at_clickhouse_migrate_for_the_previous_services_table(
    client, scratch
):
    table = scratch()
    make_legacy(client, table)

    with pytest.raises(schema.TableNotReadyError, match="previous service's table"):
        schema.ensure_table_ready(client, table=table)
