"""The status figures (/health, /metrics, event_log_status): right, and read in constant time."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from conftest import Ping
from event_log import publish, sql, status
from event_log.models import DeadLetter, OutboxEvent
from event_log.status import EXACT_COUNT_LIMIT, outbox_status

pytestmark = pytest.mark.django_db

# Tables whose size follows the backlog or the poison events: the status never scans them.
GROWING_TABLES = {"event_log_outbox", "event_log_dead_letter"}


FILL = {
    "event_log_outbox": """
        INSERT INTO event_log_outbox (event_id, event_type, event_date_time, environment,
                                      event_context, metadata_version)
        SELECT gen_random_uuid(), 'ping', now() - make_interval(secs => g), 'test', '{}', 1
        FROM generate_series(1, %s) AS g
    """,
    "event_log_dead_letter": """
        INSERT INTO event_log_dead_letter (event_id, event_type, event_date_time, environment,
            event_context, metadata_version, error, attempts, batch_id, dead_lettered_at)
        SELECT gen_random_uuid(), 'ping', now() - make_interval(secs => g), 'test', '{}', 1,
               'rejected', 1, gen_random_uuid(), now()
        FROM generate_series(1, %s) AS g
    """,
}


def _fill(table: str, rows: int) -> None:
    """``rows`` rows written in one statement, as a long outage leaves them, then analyzed."""
    with connection.cursor() as cur:
        cur.execute(FILL[table], [rows])
        cur.execute(f"ANALYZE {table}")


def _plan_nodes(node: dict[str, Any], limited: bool = False) -> Iterator[tuple[dict, bool]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, with whether a Limit is above it."""
    yield node, limited
    below_limit = limited or node["Node Type"] == "Limit"
    for child in node.get("Plans", []):
        yield from _plan_nodes(child, below_limit)


def test_status_reads_the_outbox_and_dead_letters_without_scanning_them():
    _fill("event_log_outbox", 20_000)
    _fill("event_log_dead_letter", 20_000)
    with connection.cursor() as cur:
        cur.execute(
            "EXPLAIN (FORMAT JSON) " + sql.STATUS,
            {"counted": EXACT_COUNT_LIMIT + 1, "alert_after": 10},
        )
        plan = cur.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)

    scans = [
        (node, limited)
        for node, limited in _plan_nodes(plan[0]["Plan"])
        if node.get("Relation Name") in GROWING_TABLES
    ]
    assert {node["Relation Name"] for node, _ in scans} == GROWING_TABLES
    for node, limited in scans:
        where = f"{node['Node Type']} on {node['Relation Name']}"
        assert node["Node Type"] in {"Index Scan", "Index Only Scan"}, where
        assert node["Index Name"].endswith("_pkey"), where
        # Bounded: stops after a LIMIT, or looks up one id.
        one_id = node.get("Index Cond", "").startswith("(id = ")
        assert limited or one_id, f"{where} reads without a bound: {node}"


def test_status_figures_are_exact_while_the_backlog_is_small():
    with transaction.atomic():
        ids = publish(*(Ping(n=i) for i in range(5)))
    OutboxEvent.objects.filter(event_id=ids[2]).delete()

    figures = outbox_status()

    assert (figures.outbox_depth, figures.outbox_depth_exact) == (4, True)
    first = OutboxEvent.objects.get(event_id=ids[0])
    assert figures.oldest_event_at == first.event_date_time
    assert (figures.dead_letters, figures.dead_letters_exact) == (0, True)


def test_past_the_exact_limit_depth_is_the_id_span_and_says_so(monkeypatch):
    monkeypatch.setattr(status, "EXACT_COUNT_LIMIT", 3)
    with transaction.atomic():
        ids = publish(*(Ping(n=i) for i in range(6)))
    OutboxEvent.objects.filter(event_id__in=ids[1:3]).delete()  # 4 left, ids span 6

    figures = outbox_status()

    assert (figures.outbox_depth, figures.outbox_depth_exact) == (6, False)
    OutboxEvent.objects.filter(event_id=ids[3]).delete()  # 3 left: exact again
    assert (outbox_status().outbox_depth, outbox_status().outbox_depth_exact) == (3, True)


def test_past_the_exact_limit_dead_letters_are_the_id_span_and_say_so(monkeypatch):
    monkeypatch.setattr(status, "EXACT_COUNT_LIMIT", 2)
    _fill("event_log_dead_letter", 5)
    middle = DeadLetter.objects.order_by("id").values_list("id", flat=True)[2]
    DeadLetter.objects.filter(id=middle).delete()

    figures = outbox_status()

    assert (figures.dead_letters, figures.dead_letters_exact) == (5, False)


def test_health_stays_up_with_a_waiting_event_dated_infinity(client):
    with transaction.atomic():
        publish(Ping(n=1))
    with connection.cursor() as cur:
        cur.execute("UPDATE event_log_outbox SET event_date_time = 'infinity'")

    response = client.get("/health")

    assert response.status_code == 200
    assert response.json()["outbox_depth"] == 1
    assert response.json()["lag_seconds"] == 0
