"""1. Publish overhead: what an event costs the business transaction that publishes it.

Each sample is one business transaction, ``transaction.atomic()`` around
``User.objects.create_user(...)``, timed from before ``atomic()`` is entered
until after it commits:

- ``none``: the user only, no event;
- ``outbox``: the user plus ``publish(UserCreated(...))`` (one INSERT into the
  outbox in the same transaction);
- ``direct``: the user plus the old way, a synchronous INSERT of the event row
  into ClickHouse from inside the request (kept here only as the baseline);
- ``use_case``: the whole ``CreateUser`` use case (its duplicate-email check,
  savepoint and ``publish()``), for reference;
- ``outbox_kick``: ``outbox`` with the on-commit kick on, as in production: a
  Redis round trip after each commit (no worker consumes the queued run here,
  so the debounce flag stays set and the commit pays one ``SET NX``);
- ``outbox_quiet``: ``outbox`` with the ``event_log.publisher`` logger raised
  to WARNING, to show what ``publish()``'s INFO log line costs.

Logging is as deployed (JSON lines at INFO, written to a file).

The variants are interleaved in a shuffled order in every round, so drift in the
machine (autovacuum, checkpoints, caches) falls on all of them alike.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from harness import BenchEnv, ClickHouseProbe, clear_redis, empty_outbox, percentile

VARIANTS = ("none", "outbox", "direct", "use_case", "outbox_kick", "outbox_quiet")


def run(bench: BenchEnv, probe: ClickHouseProbe, *, rounds: int, warmup: int) -> dict[str, Any]:
    from django.conf import settings  # noqa: PLC0415
    from django.db import connection, transaction  # noqa: PLC0415

    from event_log import clickhouse, publish, sql  # noqa: PLC0415
    from users.events import UserCreated  # noqa: PLC0415
    from users.models import User  # noqa: PLC0415
    from users.use_cases import CreateUser, CreateUserRequest  # noqa: PLC0415

    ch = clickhouse.connect(bench.clickhouse_url)
    columns = list(sql.CLICKHOUSE_COLUMNS)
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

    publisher_log = logging.getLogger("event_log.publisher")

    def outbox_quiet() -> None:
        level = publisher_log.level
        publisher_log.setLevel(logging.WARNING)
        try:
            outbox()
        finally:
            publisher_log.setLevel(level)

    actions = {
        "none": none,
        "outbox": outbox,
        "direct": direct,
        "use_case": use_case,
        "outbox_kick": outbox_kick,
        "outbox_quiet": outbox_quiet,
    }
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    order = list(VARIANTS)
    rng = random.Random(8)
    clear_redis(bench)
    connection.ensure_connection()
    try:
        for i in range(warmup + rounds):
            rng.shuffle(order)
            for name in order:
                action = actions[name]
                started = time.perf_counter()
                action()
                elapsed = time.perf_counter() - started
                if i >= warmup:
                    samples[name].append(elapsed)
    finally:
        ch.close()
        clear_redis(bench)
        empty_outbox()

    stats = {
        name: {
            "n": len(values),
            "median_ms": percentile(values, 50) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
            "mean_ms": sum(values) / len(values) * 1000,
        }
        for name, values in samples.items()
    }
    base = stats["none"]["median_ms"]
    outbox_added = stats["outbox"]["median_ms"] - base
    direct_added = stats["direct"]["median_ms"] - base
    return {
        "rounds": rounds,
        "warmup": warmup,
        "variants": stats,
        "outbox_added_median_ms": outbox_added,
        "direct_added_median_ms": direct_added,
        "kick_added_median_ms": stats["outbox_kick"]["median_ms"] - base,
        "quiet_added_median_ms": stats["outbox_quiet"]["median_ms"] - base,
        "outbox_over_none": stats["outbox"]["median_ms"] / base,
        "direct_over_outbox": stats["direct"]["median_ms"] / stats["outbox"]["median_ms"],
        "direct_added_over_outbox_added": (
            direct_added / outbox_added if outbox_added > 0 else float("inf")
        ),
    }
