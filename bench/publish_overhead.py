"""1. Publish overhead: what an event costs the business transaction that publishes it.

Each sample is one business transaction, ``transaction.atomic()`` around
``User.objects.create_user(...)``, timed from before ``atomic()`` is entered
until after it commits:

- ``none``: the user only, no event;
- ``outbox``: the user plus ``publish(UserCreated(...))`` (one INSERT into the
  outbox in the same transaction);
- ``direct``: the user plus the old way, a synchronous INSERT of the event row
  into ClickHouse from inside the request (kept here only as the baseline);
- ``use_case``: the whole ``CreateUser`` use case (its savepoint, the user
  insert and ``publish()``), for reference;
- ``outbox_kick``: ``outbox`` with the on-commit kick on, as in production: the
  commit wakes the process's kick thread, which does the Redis round trip;
- ``select_1``: the user plus one ``SELECT 1`` in the same transaction: the
  cost of any extra statement (a client-server round trip), the floor under
  any outbox that writes its row with a statement of its own.

Logging is as deployed (JSON lines at INFO, written to a file).

Two passes, each interleaving its variants in a shuffled order in every round,
so that drift in the machine (autovacuum, checkpoints, other work) falls on all
of them alike:

- pass A, the outbox variants, with no ClickHouse client in the process (as the
  web process runs in production: it never talks to ClickHouse);
- pass B, ``none``, ``outbox`` and ``direct``: the direct insert needs a
  ClickHouse client, and the embedded engine then runs its inserts and merges
  inside this process, which slows every variant of that pass a little. The
  direct/outbox comparison is made within this pass.

Pass C takes the outbox statement apart, inside a transaction that is already
open (as after the business write; rolled back, so no commit is timed): one
``SELECT 1``; the outbox INSERT of one event through Django's cursor, which
binds the values on the client (``ClientCursor``); the same INSERT through
psycopg's cursor, which sends them apart (what ``publish()`` uses); and the
whole ``publish()`` (validation, serialization, event id and time, the INSERT,
the on-commit kick's registration, the metric). Each is timed around the call.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from harness import BenchEnv, ClickHouseProbe, clear_redis, empty_outbox, percentile

PASS_A = ("none", "outbox", "use_case", "outbox_kick", "select_1")
PASS_B = ("none", "outbox", "direct")
PASS_C = ("select_1", "insert_client_binding", "insert_server_binding", "publish")


def run(bench: BenchEnv, probe: ClickHouseProbe, *, rounds: int, warmup: int) -> dict[str, Any]:
    from django.conf import settings  # noqa: PLC0415
    from django.db import connection, transaction  # noqa: PLC0415

    from event_log import clickhouse, envelope, publish, sql  # noqa: PLC0415
    from users.events import UserCreated  # noqa: PLC0415
    from users.models import User  # noqa: PLC0415
    from users.use_cases import CreateUser, CreateUserRequest  # noqa: PLC0415

    ch: Any = None
    # The old way's columns: it wrote no envelope.
    columns = [c for c in sql.CLICKHOUSE_COLUMNS if c not in sql.ENVELOPE_COLUMNS]
    table = probe.table
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def email() -> str:
        return f"bench-{run_id}-{next(counter)}@example.com"

    def event_of(user: Any) -> UserCreated:
        return UserCreated(
            user_id=user.pk,
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
        )

    def set_kick(enabled: bool) -> None:
        settings.EVENT_LOG = {**settings.EVENT_LOG, "KICK_ENABLED": enabled}

    def none() -> None:
        with transaction.atomic():
            User.objects.create_user(email=email(), first_name="Ada", last_name="Lovelace")

    def outbox() -> None:
        with transaction.atomic():
            user = User.objects.create_user(email=email(), first_name="Ada", last_name="Lovelace")
            publish(event_of(user))

    def direct() -> None:
        with transaction.atomic():
            user = User.objects.create_user(email=email(), first_name="Ada", last_name="Lovelace")
            event = event_of(user)
            row = [
                uuid.uuid4(),
                event.event_type,
                datetime.now(UTC),
                settings.ENVIRONMENT,
                event.model_dump_json(),
                event.metadata_version,
            ]
            ch.insert(table, [row], column_names=columns, settings={"async_insert": 0})

    def use_case() -> None:
        response = CreateUser().execute(
            CreateUserRequest(email=email(), first_name="Ada", last_name="Lovelace")
        )
        assert not response.error, response.error

    def outbox_kick() -> None:
        set_kick(True)
        try:
            outbox()
        finally:
            set_kick(False)

    def select_1() -> None:
        with transaction.atomic():
            User.objects.create_user(email=email(), first_name="Ada", last_name="Lovelace")
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")

    actions = {
        "none": none,
        "outbox": outbox,
        "direct": direct,
        "use_case": use_case,
        "outbox_kick": outbox_kick,
        "select_1": select_1,
    }
    rng = random.Random(8)

    def measure(variants: tuple[str, ...], rounds_: int) -> dict[str, dict[str, float]]:
        samples: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        for i in range(warmup + rounds_):
            rng.shuffle(order)
            for name in order:
                action = actions[name]
                started = time.perf_counter()
                action()
                elapsed = time.perf_counter() - started
                if i >= warmup:
                    samples[name].append(elapsed)
        return {
            name: {
                "n": len(values),
                "median_ms": percentile(values, 50) * 1000,
                "p99_ms": percentile(values, 99) * 1000,
                "mean_ms": sum(values) / len(values) * 1000,
            }
            for name, values in samples.items()
        }

    row_statement = sql.insert_events_statement(1)

    def outbox_row() -> list[Any]:
        event = UserCreated(user_id=1, email=email(), first_name="Ada", last_name="Lovelace")
        return [
            uuid.uuid4(),
            event.event_type,
            datetime.now(UTC),
            settings.ENVIRONMENT,
            event.model_dump_json(),
            event.metadata_version,
            *envelope.current()[:2],  # actor
            *event.subject_key(),
            *envelope.current()[2:],  # request id, traceparent
        ]

    def statement_cost(rounds_: int) -> dict[str, dict[str, float]]:
        import psycopg  # noqa: PLC0415

        event = UserCreated(user_id=1, email=email(), first_name="Ada", last_name="Lovelace")

        def select_1_only() -> None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")

        def client_binding() -> None:
            values = outbox_row()
            with connection.cursor() as cursor:
                cursor.execute(row_statement, values)

        def server_binding() -> None:
            values = outbox_row()
            with psycopg.Cursor(connection.connection) as cursor:
                cursor.execute(row_statement, values)

        steps = {
            "select_1": select_1_only,
            "insert_client_binding": client_binding,
            "insert_server_binding": server_binding,
            "publish": lambda: publish(event),
        }
        samples: dict[str, list[float]] = {name: [] for name in PASS_C}
        order = list(PASS_C)
        for i in range(warmup + rounds_):
            rng.shuffle(order)
            for name in order:
                with transaction.atomic():
                    select_1_only()  # the transaction is open, as after the business write
                    started = time.perf_counter()
                    steps[name]()
                    elapsed = time.perf_counter() - started
                    transaction.set_rollback(True)
                if i >= warmup:
                    samples[name].append(elapsed)
        floor = percentile(samples["select_1"], 50)
        return {
            name: {
                "n": len(values),
                "median_us": percentile(values, 50) * 1e6,
                "p90_us": percentile(values, 90) * 1e6,
                "over_select_1": percentile(values, 50) / floor,
            }
            for name, values in samples.items()
        }

    clear_redis(bench)
    connection.ensure_connection()
    try:
        statements = statement_cost(rounds)
        stats = measure(PASS_A, rounds)
        ch = clickhouse.connect(bench.clickhouse_url)
        try:
            direct_stats = measure(PASS_B, max(rounds // 2, 1))
        finally:
            ch.close()
    finally:
        clear_redis(bench)
        empty_outbox()

    base = stats["none"]["median_ms"]
    outbox_added = stats["outbox"]["median_ms"] - base
    b_none = direct_stats["none"]["median_ms"]
    b_outbox_added = direct_stats["outbox"]["median_ms"] - b_none
    b_direct_added = direct_stats["direct"]["median_ms"] - b_none
    return {
        "statements": statements,
        "rounds": rounds,
        "rounds_direct_pass": max(rounds // 2, 1),
        "warmup": warmup,
        "variants": stats,
        "direct_pass": direct_stats,
        "outbox_added_median_ms": outbox_added,
        "kick_added_median_ms": stats["outbox_kick"]["median_ms"] - base,
        "select_1_added_median_ms": stats["select_1"]["median_ms"] - base,
        "outbox_added_over_select_1_added": (
            outbox_added / (stats["select_1"]["median_ms"] - base)
            if stats["select_1"]["median_ms"] > base
            else float("inf")
        ),
        "use_case_added_median_ms": stats["use_case"]["median_ms"] - base,
        "outbox_over_none": stats["outbox"]["median_ms"] / base,
        "direct_pass_outbox_added_median_ms": b_outbox_added,
        "direct_added_median_ms": b_direct_added,
        "direct_over_outbox": direct_stats["direct"]["median_ms"]
        / direct_stats["outbox"]["median_ms"],
        "direct_added_over_outbox_added": (
            b_direct_added / b_outbox_added if b_outbox_added > 0 else float("inf")
        ),
    }
