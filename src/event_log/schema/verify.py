"""Is the event table fit for exactly-once, durable delivery? Repair what can be repaired.

``CREATE TABLE IF NOT EXISTS`` keeps whatever table already has the name, so a
successful migration proves nothing about the table the relay writes to. This
module reads what the table really is (engine, settings, columns) and decides:

- the engine must deduplicate inserts by token *and* never drop or combine rows in
  merges: plain ``MergeTree`` with a ``non_replicated_deduplication_window`` of at
  least :data:`DEDUP_WINDOW_MIN`, or ``ReplicatedMergeTree`` / ``SharedMergeTree``
  with a ``replicated_deduplication_window`` of at least as much. Replacing,
  Summing, Aggregating, Collapsing… merge trees fold rows with equal sorting keys
  together; ``Log``, ``Memory``, ``Distributed``… do not deduplicate. Both are refused.
- every column the relay inserts must exist with its type (a missing one is refused:
  the previous service's table is converted by ``legacy``, anything else is the
  operator's call);
- ``fsync_after_insert`` and ``fsync_part_directory`` must be on, so an acknowledged
  insert is on disk before the relay deletes its outbox rows. A setting written
  explicitly as ``0`` in the table's definition is an operator's decision and is
  kept (``clickhouse_table_fsync_off`` is logged); one left to the server's
  default is turned on.

A window too small and fsync left to the default are repaired with
``ALTER TABLE … MODIFY SETTING``; everything else is refused with
:class:`TableNotReadyError`, and then nothing is changed.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field

import structlog
from clickhouse_connect.driver.client import Client

from event_log.clickhouse import ClickHouseError
from event_log.conf import event_log_settings

logger = structlog.get_logger(__name__)

DEDUP_WINDOW_MIN = 10_000
FSYNC_SETTINGS = ("fsync_after_insert", "fsync_part_directory")

# What the relay inserts (sql.RELAY_COLUMNS), and the types it can rely on.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "event_id": ("UUID",),
    "event_type": ("LowCardinality(String)", "String"),
    "event_date_time": ("DateTime64(6, 'UTC')",),
    "environment": ("LowCardinality(String)", "String"),
    "event_context": ("String",),
    "metadata_version": ("UInt64",),
    # The envelope (migration 0004_envelope).
    "actor_type": ("LowCardinality(String)", "String"),
    "actor_id": ("String",),
    "subject_type": ("LowCardinality(String)", "String"),
    "subject_id": ("String",),
    "request_id": ("String",),
    "traceparent": ("String",),
    # The batch each row travelled in (migration 0005_batch_chain).
    "batch_id": ("UUID",),
}
# Column kinds an INSERT cannot write.
_NOT_INSERTABLE = frozenset({"MATERIALIZED", "ALIAS", "EPHEMERAL"})

PLAIN_ENGINES = frozenset({"MergeTree"})
REPLICATED_ENGINES = frozenset({"ReplicatedMergeTree", "SharedMergeTree"})

_MIGRATE = "run `manage.py clickhouse_migrate`"


class TableNotReadyError(ClickHouseError):
    """The event table cannot take the event log as it is; nothing was changed.

    A :class:`ClickHouseError` with no code, so transient for the relay: it keeps
    the batch sealed and tries again once an operator has fixed the table.
    ``problems`` holds one sentence per problem, each saying what to do.
    """

    def __init__(self, table: str, problems: list[str]) -> None:
        super().__init__(
            f"ClickHouse table {table} cannot take the event log: " + " ".join(problems)
        )
        self.table = table
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TableShape:
    """What ClickHouse says a table is; ``engine`` is None when it does not exist."""

    database: str
    name: str
    engine: str | None
    # The SETTINGS written in the table's definition, as ClickHouse prints them.
    explicit_settings: dict[str, str] = field(default_factory=dict)
    # The server's defaults for the settings this module cares about.
    default_settings: dict[str, str] = field(default_factory=dict)
    # column -> (type, default kind)
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"`{self.database}`.`{self.name}`"

    def setting(self, name: str) -> str | None:
        return self.explicit_settings.get(name, self.default_settings.get(name))


@dataclass(frozen=True, slots=True)
class Assessment:
    """What to change (``repairs``: setting -> value) or why not (``problems``)."""

    repairs: dict[str, str]
    problems: list[str]
    # fsync settings the table's definition turns off on purpose.
    fsync_off: list[str]


def assess(shape: TableShape) -> Assessment:
    """Decide, without I/O, whether ``shape`` is fit, repairable or refused."""
    if shape.engine is None:
        return Assessment({}, [f"It does not exist: {_MIGRATE}."], [])
    problems: list[str] = []
    window_setting = _window_setting(shape.engine)
    if window_setting is None:
        problems.append(
            f"Its engine is {shape.engine}; the event log needs MergeTree or "
            "ReplicatedMergeTree, which deduplicate retried inserts and never fold rows "
            "together in merges: create a table with the DDL of "
            "src/event_log/clickhouse_migrations/ under another name, copy the rows "
            '(INSERT … SELECT) and EXCHANGE TABLES (docs/architecture.md, "The tables").'
        )
    problems += _column_problems(shape)
    if problems or window_setting is None:
        return Assessment({}, problems, [])

    repairs: dict[str, str] = {}
    if _as_int(shape.setting(window_setting)) < DEDUP_WINDOW_MIN:
        repairs[window_setting] = str(DEDUP_WINDOW_MIN)
    fsync_off = []
    for name in FSYNC_SETTINGS:
        if _as_bool(shape.setting(name)):
            continue
        if name in shape.explicit_settings:
            fsync_off.append(name)
        else:
            repairs[name] = "1"
    return Assessment(repairs, [], fsync_off)


def is_legacy_shape(columns: dict[str, str]) -> bool:
    """The table the previous service created: no event_id, ``metadata_version Int32``."""
    return (
        set(columns)
        == {"event_type", "event_date_time", "environment", "event_context", "metadata_version"}
        and columns["event_type"] == "String"
        and columns["environment"] == "String"
        and columns["event_context"] == "String"
        and columns["metadata_version"] == "Int32"
        and re.fullmatch(r"DateTime64\(6(, '[^']+')?\)", columns["event_date_time"]) is not None
    )


def _window_setting(engine: str) -> str | None:
    if engine in PLAIN_ENGINES:
        return "non_replicated_deduplication_window"
    if engine in REPLICATED_ENGINES:
        return "replicated_deduplication_window"
    return None


def _column_problems(shape: TableShape) -> list[str]:
    types = {name: kind for name, (kind, _) in shape.columns.items()}
    if is_legacy_shape(types):
        return [
            "It is the previous service's table (no event_id column): "
            f"{_MIGRATE}, which converts it keeping every row (docs/operations.md)."
        ]
    problems = []
    missing = [name for name in REQUIRED_COLUMNS if name not in shape.columns]
    if missing:
        problems.append(
            f"It has no column {', '.join(missing)}: add "
            + ("it" if len(missing) == 1 else "them")
            + " with ALTER TABLE … ADD COLUMN (types in src/event_log/clickhouse_migrations/)."
        )
    for name, expected in REQUIRED_COLUMNS.items():
        if name not in shape.columns:
            continue
        kind, default_kind = shape.columns[name]
        if kind not in expected:
            problems.append(
                f"Its column {name} is {kind}, not {expected[0]}: change it with "
                "ALTER TABLE … MODIFY COLUMN."
            )
        elif default_kind in _NOT_INSERTABLE:
            problems.append(
                f"Its column {name} is {default_kind}, so an INSERT cannot write it: "
                "make it an ordinary column."
            )
    return problems


def _as_int(value: str | None) -> int:
    try:
        return int(str(value).strip("'"))
    except ValueError:
        return 0


def _as_bool(value: str | None) -> bool:
    return str(value).strip("'").lower() in {"1", "true"}


# -- I/O -----------------------------------------------------------------------------

_SETTINGS_CLAUSE = re.compile(r"\bSETTINGS\b(.*)$", re.DOTALL)


def parse_settings(engine_full: str) -> dict[str, str]:
    """The ``name = value`` pairs of an ``engine_full``'s SETTINGS clause."""
    match = _SETTINGS_CLAUSE.search(engine_full)
    if match is None:
        return {}
    return dict(re.findall(r"\b([a-z_0-9]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^,\s]+)", match.group(1)))


def inspect_table(ch: Client, *, database: str, table: str) -> TableShape:
    """Read ``database.table``'s engine, settings and columns from the system tables."""
    try:
        found = ch.query(
            "SELECT engine, engine_full FROM system.tables "
            "WHERE database = %(db)s AND name = %(t)s",
            parameters={"db": database, "t": table},
        ).result_rows
        if not found:
            return TableShape(database, table, None)
        engine, engine_full = found[0]
        columns = {
            name: (kind, default_kind)
            for name, kind, default_kind in ch.query(
                "SELECT name, type, default_kind FROM system.columns "
                "WHERE database = %(db)s AND table = %(t)s ORDER BY position",
                parameters={"db": database, "t": table},
            ).result_rows
        }
        replicated = engine in REPLICATED_ENGINES
        settings_table = (
            "system.replicated_merge_tree_settings" if replicated else "system.merge_tree_settings"
        )
        defaults = {
            str(name): str(value)
            for name, value in ch.query(
                f"SELECT name, value FROM {settings_table} WHERE name IN %(names)s",  # noqa: S608
                parameters={
                    "names": [
                        "non_replicated_deduplication_window",
                        "replicated_deduplication_window",
                        *FSYNC_SETTINGS,
                    ]
                },
            ).result_rows
        }
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc
    return TableShape(
        database=database,
        name=table,
        engine=str(engine),
        explicit_settings=parse_settings(str(engine_full)),
        default_settings=defaults,
        columns=columns,
    )


def verify_table(
    ch: Client, *, table: str | None = None, database: str | None = None, repair: bool = True
) -> dict[str, str]:
    """Make sure ``table`` can take the event log; returns the settings it changed.

    With ``repair`` (``clickhouse_migrate``), a deduplication window below
    :data:`DEDUP_WINDOW_MIN` and fsync settings left to the server's default are
    set with one ``ALTER TABLE … MODIFY SETTING``. Without it, they are refused
    like the rest. Raises :class:`TableNotReadyError` (nothing changed) when the
    table cannot be used, :class:`ClickHouseError` when ClickHouse cannot be asked.
    """
    table = table or event_log_settings().CLICKHOUSE_TABLE
    database = database or ch.database or "default"
    shape = inspect_table(ch, database=database, table=table)
    verdict = assess(shape)
    if verdict.problems:
        raise TableNotReadyError(shape.qualified, verdict.problems)
    if verdict.repairs and not repair:
        wrong = ", ".join(f"{k} is {shape.setting(k) or 'unset'}" for k in verdict.repairs)
        raise TableNotReadyError(
            shape.qualified, [f"Its {wrong}; it needs {_wanted(verdict.repairs)}: {_MIGRATE}."]
        )
    for name in verdict.fsync_off:
        logger.warning("clickhouse_table_fsync_off", table=shape.qualified, setting=name)
    if verdict.repairs:
        try:
            ch.command(f"ALTER TABLE {shape.qualified} MODIFY SETTING {_wanted(verdict.repairs)}")
        except Exception as exc:
            raise ClickHouseError.from_exception(exc) from exc
        logger.info("clickhouse_table_repaired", table=shape.qualified, settings=verdict.repairs)
    return verdict.repairs


def _wanted(repairs: dict[str, str]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in repairs.items())


_ready: weakref.WeakKeyDictionary[Client, set[tuple[str, str]]] = weakref.WeakKeyDictionary()
_ready_lock = threading.Lock()


def ensure_table_ready(
    ch: Client, *, table: str | None = None, database: str | None = None
) -> None:
    """Refuse to deliver into a table that would break exactly-once or durability.

    For the relay, before its first insert through ``ch``. Only reads (the relay's
    ClickHouse user needs no DDL grant); repairs are ``clickhouse_migrate``'s job.
    A success is remembered for the life of ``ch``, so later calls cost nothing; a
    failure is not, so the next call looks again. Raises :class:`TableNotReadyError`
    (transient: keep the batch, back off, try again) or :class:`ClickHouseError`.
    """
    table = table or event_log_settings().CLICKHOUSE_TABLE
    database = database or ch.database or "default"
    key = (database, table)
    with _ready_lock:
        if key in _ready.get(ch, ()):
            return
    verify_table(ch, table=table, database=database, repair=False)
    with _ready_lock:
        _ready.setdefault(ch, set()).add(key)
