"""The envelope: who, about what, from which request and trace, on every event."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from conftest import insert_outbox_rows
from event_log import sql
from event_log.models import DeadLetter, OutboxEvent

BEFORE_ENVELOPE = [("event_log", "0003_relay_control")]


def migrate_to(targets: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def relation_files() -> dict[str, int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname, pg_relation_filenode(oid) FROM pg_class "
            "WHERE relname IN ('event_log_outbox', 'event_log_dead_letter')"
        )
        return dict(cur.fetchall())


# -- the PostgreSQL migration -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_envelope_migration_keeps_every_row_and_rewrites_no_table():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    migrate_to(BEFORE_ENVELOPE)
    try:
        pending = set(insert_outbox_rows(["2026-01-01 00:00:00+00"] * 500))
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO event_log_dead_letter (event_id, event_type, event_date_time, "
                "environment, event_context, metadata_version, error, attempts, batch_id, "
                "dead_lettered_at) SELECT gen_random_uuid(), 'ping', now(), 'test', '{}', 1, "
                "'refused', 1, gen_random_uuid(), now() FROM generate_series(1, 20) "
                "RETURNING event_id"
            )
            dead = {row[0] for row in cur.fetchall()}
        files_before = relation_files()

        migrate_to(latest)

        assert relation_files() == files_before  # no table was rewritten
    finally:
        migrate_to(latest)
    columns = ("event_id", *sql.ENVELOPE_COLUMNS)
    outbox = list(OutboxEvent.objects.values_list(*columns))
    letters = list(DeadLetter.objects.values_list(*columns))
    assert {row[0] for row in outbox} == pending and len(outbox) == len(pending)
    assert {row[0] for row in letters} == dead and len(letters) == len(dead)
    assert {row[1:] for row in outbox + letters} == {("",) * len(sql.ENVELOPE_COLUMNS)}
