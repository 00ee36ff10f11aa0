"""event_log_query and event_log_status's ClickHouse figures: read-only, limited, in every mode."""

import json
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from conftest import SRC, WORKER, Ping, celery_argv, publish_pings, running, wait_until
from event_log import clickhouse, publish
from event_log.clickhouse import ClickHouseError
from event_log.models import OutboxEvent
from event_log.query import (
    EngineBusyError,
    QueryRefusedError,
    ask_engine_owner,
    check_statement,
    engine_holder,
    query_event_log,
    run_readonly,
)
from event_log.relay import run_relay
from event_log.tasks import relay_outbox

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO event_log (event_type) VALUES ('x')",
        "DROP TABLE event_log",
        "SELECT 1; DROP TABLE event_log",
        "SELECT 1; SELECT 2",
        "  ALTER TABLE event_log DELETE WHERE 1",
        "SYSTEM STOP MERGES",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
        "",
        "-- only a comment",
    ],
)
def test_anything_but_one_read_only_statement_is_refused_before_clickhouse(statement):
    with pytest.raises(QueryRefusedError):
        check_statement(statement)


@pytest.mark.parametrize(
    ("statement", "checked"),
    [
        ("SELECT 1;", "SELECT 1"),
        ("select ';' -- a comment; DROP TABLE x\n", "select ';'"),
        ("WITH 1 AS x SELECT x /* ; */", "WITH 1 AS x SELECT x"),
        ("(SELECT 1)", "(SELECT 1)"),
        ("SHOW TABLES", "SHOW TABLES"),
        ("DESCRIBE event_log", "DESCRIBE event_log"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT 1"),
        ("SELECT 'INTO OUTFILE'", "SELECT 'INTO OUTFILE'"),
    ],
)
def test_one_read_only_statement_is_accepted_as_written(statement, checked):
    assert check_statement(statement) == checked


def test_clickhouse_itself_refuses_a_write_sent_read_only(ch):
    # Past the text check, readonly = 1 makes the engine refuse any write.
    with clickhouse.client(ch.url) as client:
        with pytest.raises(Exception) as refused:
            client.query(
                f"INSERT INTO {ch.table} (event_type) VALUES ('x')", settings={"readonly": 1}
            )
        assert ClickHouseError.from_exception(refused.value).code == 164  # READONLY
    assert ch.event_ids() == []


def test_a_session_that_reads_only_already_is_queried_without_setting_readonly_again(ch):
    # As Compose's reader: its profile's readonly = 2 may not be changed, even to 1.
    with clickhouse.client(ch.url) as client:
        assert run_readonly(client, "SELECT getSetting('readonly')").rows == [[1]]
        client.command("SET readonly = 2")
        assert run_readonly(client, "SELECT getSetting('readonly')").rows == [[2]]
        client.server_settings["readonly"] = client.server_settings["readonly"]._replace(value="2")
        assert run_readonly(client, "SELECT getSetting('readonly')").rows == [[2]]
        with pytest.raises(ClickHouseError) as refused:
            run_readonly(client, f"SELECT * FROM {ch.table} FORMAT Nonsense")
        assert refused.value.code is not None


def test_the_limit_holds_and_says_rows_were_left_out(ch):
    with clickhouse.client(ch.url) as client:
        result = run_readonly(client, "SELECT number FROM system.numbers", limit=7)

    assert result.rows == [[n] for n in range(7)]
    assert result.truncated is True


def test_event_log_query_reads_the_engine_directly_when_nobody_holds_it(ch, manage):
    published = publish_pings(5)
    run_relay()

    done = manage("event_log_query", f"SELECT event_id FROM {ch.table}", "--format", "json")

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert sorted(row[0] for row in answer["rows"]) == sorted(str(i) for i in published)
    assert answer["truncated"] is False


def test_event_log_query_table_output_names_the_columns(ch):
    publish_pings(3)
    run_relay()
    out = _call("event_log_query", f"SELECT event_type, count() AS n FROM {ch.table} GROUP BY 1")

    assert out.splitlines()[0].split() == ["event_type", "n"]
    assert out.splitlines()[2].split() == ["ping", "3"]


def test_event_log_query_refuses_a_write_with_a_clear_error_and_writes_nothing(ch):
    with pytest.raises(CommandError, match="refused: only read-only statements"):
        call_command("event_log_query", f"INSERT INTO {ch.table} (event_type) VALUES ('x')")

    assert ch.event_ids() == []


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


# -- with a worker holding the embedded engine -----------------------------------------


@pytest.fixture
def worker_holding_the_engine(ch, process_env, tmp_path: Path):
    """A Celery worker that delivered events, so its relay holds the engine open."""
    if clickhouse.embedded_path(ch.url) is None:
        pytest.skip("the engine is held only in embedded mode")
    env = {**process_env, "EVENT_LOG_KICK": "false"}
    log = tmp_path / "worker.log"
    with running(celery_argv(*WORKER), env=env, log=log):
        wait_until(lambda: "ready" in log.read_text(errors="replace"), timeout=60)
        with transaction.atomic():
            published = publish(*(Ping(n=i) for i in range(250)))
        relay_outbox.delay()
        wait_until(lambda: not OutboxEvent.objects.exists(), timeout=60)
        path = clickhouse.embedded_path(ch.url)
        assert path is not None
        assert engine_holder(path) is not None, "the worker holds the engine"
        yield published


@pytest.mark.slow
def test_event_log_query_answers_while_a_worker_holds_the_engine(
    worker_holding_the_engine, ch, manage
):
    published = worker_holding_the_engine
    done = manage(
        "event_log_query",
        f"SELECT event_id FROM {ch.table}",
        "--format",
        "json",
        "--limit",
        "1000",
    )

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    ids = [row[0] for row in answer["rows"]]
    assert answer["via"] == "engine owner"
    assert set(ids) == {str(i) for i in published}
    assert len(ids) == len(published)


@pytest.mark.slow
def test_event_log_search_answers_while_a_worker_holds_the_engine(
    worker_holding_the_engine, ch, manage
):
    published = worker_holding_the_engine

    done = manage("event_log_search", "--type", "ping", "--actor", "system", "--json",
                  "--limit", "1000")  # fmt: skip

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    ids = [event["event_id"] for event in answer["events"]]
    assert set(ids) == {str(i) for i in published}
    assert len(ids) == len(published)
    assert answer["more"] is False
    searched = OutboxEvent.objects.get(event_type="event_log_searched")
    assert (searched.actor_type, searched.actor_id) == ("command", "event_log_search")


@pytest.mark.slow
def test_event_log_status_reports_clickhouse_while_a_worker_holds_the_engine(
    worker_holding_the_engine, manage
):
    done = manage("event_log_status", "--json")

    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["clickhouse"]
    assert figures["reachable"] is True, figures
    assert figures["rows"] == len(worker_holding_the_engine)
    assert figures["via"] == "engine owner"


@pytest.mark.slow
def test_the_limit_holds_through_the_worker(worker_holding_the_engine, ch, manage):
    done = manage("event_log_query", f"SELECT event_id FROM {ch.table}", "--format", "json")

    answer = json.loads(done.stdout)
    assert len(answer["rows"]) == 100  # the default limit, of 250 stored
    assert answer["truncated"] is True


@pytest.mark.slow
def test_a_write_sent_to_the_worker_is_refused_and_changes_nothing(
    worker_holding_the_engine, ch, settings
):
    published = worker_holding_the_engine
    for statement in (f"INSERT INTO {ch.table} (event_type) VALUES ('x')", f"TRUNCATE {ch.table}"):
        with pytest.raises(QueryRefusedError):
            query_event_log(statement, url=ch.url)
    # Sent past this process's check, straight to the worker's task: refused there too.
    with pytest.raises(QueryRefusedError):
        ask_engine_owner(f"DROP TABLE {ch.table}", limit=10, url=ch.url, timeout=30)

    ids = ch_ids_through_worker(ch)
    assert set(ids) == {str(i) for i in published}
    assert len(ids) == len(published)


def ch_ids_through_worker(ch) -> list[str]:
    result = query_event_log(f"SELECT event_id FROM {ch.table}", url=ch.url, limit=10_000)
    assert result.via == "engine owner"
    return [row[0] for row in result.rows]


def test_an_empty_answer_prints_no_rows(ch):
    err = StringIO()
    call_command(
        "event_log_query", f"SELECT event_id FROM {ch.table}", stdout=StringIO(), stderr=err
    )

    assert "(0 rows)" in err.getvalue()


@pytest.mark.slow
def test_a_holder_that_answers_no_queries_is_named_after_the_timeout(ch, process_env, tmp_path):
    if clickhouse.embedded_path(ch.url) is None:
        pytest.skip("the engine is held only in embedded mode")
    path = clickhouse.embedded_path(ch.url)
    assert path is not None
    log = tmp_path / "relay.log"
    # A relay_events process opens the engine at start and consumes no broker queue.
    with running(
        [sys.executable, str(SRC / "manage.py"), "relay_events"], env=process_env, log=log
    ) as relay:
        wait_until(lambda: engine_holder(path) is not None, timeout=60)
        with pytest.raises(EngineBusyError) as busy:
            query_event_log(f"SELECT count() FROM {ch.table}", url=ch.url, timeout=1)

    assert f"PID: {relay.pid}" in str(busy.value)
    assert "relay_events process does not" in str(busy.value)


@pytest.mark.slow
def test_clickhouse_migrate_names_the_process_holding_the_engine(ch, process_env, tmp_path, manage):
    if clickhouse.embedded_path(ch.url) is None:
        pytest.skip("the engine is held only in embedded mode")
    path = clickhouse.embedded_path(ch.url)
    assert path is not None
    with running(
        [sys.executable, str(SRC / "manage.py"), "relay_events"],
        env=process_env,
        log=tmp_path / "relay.log",
    ) as relay:
        wait_until(lambda: engine_holder(path) is not None, timeout=60)
        done = manage("clickhouse_migrate")

    assert done.returncode == 1
    assert f"held by another process (PID: {relay.pid}" in done.stderr
    assert "BAD_ARGUMENTS" not in done.stderr
