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


def run(bench: BenchEnv, probe: ClickHouseProbe, *, rounds: int, warmup: int) -> dict[str, Any]:
    from django.conf import settings  # noqa: PLC0415
    from django.db import connection, transaction  # noqa: PLC0415

    from event_log import clickhouse, publish, sql  # noqa: PLC0415
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

    clear_redis(bench)
    connection.ensure_connection()
    try:
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
