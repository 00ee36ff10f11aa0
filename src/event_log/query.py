"""Read-only queries of the event log in ClickHouse, for operators, in every mode.

- A server URL: the query goes straight to the server.
- The embedded engine, free: this process opens it for the one query and closes it.
- The embedded engine, held by another process (``make run``'s Celery worker): the
  query goes through the Celery broker to that worker, which runs it on the client it
  already holds and leaves the answer in the cache for the asker (ADR 0011). Only one
  process may open the engine's data folder, and opening it anew on every relay run
  would grow the worker's memory by about 1.4 MiB each time.

Every query is checked twice: here, as text (one SELECT, SHOW, DESCRIBE, EXPLAIN or
WITH statement, no ``INTO OUTFILE``), and by ClickHouse, which runs it with
``readonly = 1``. The row limit is part of the statement ClickHouse runs (a SELECT
is wrapped in ``SELECT * FROM (…) LIMIT n + 1``; ``readonly = 1`` forbids the
``max_result_rows`` setting), and the answer is cut to the limit here as well.
"""

from __future__ import annotations

import fcntl
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from django.core.cache import cache

from event_log import clickhouse
from event_log.clickhouse import ClickHouseError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000_000
# Seconds the asker waits for the engine's owner: a solo worker answers after the
# relay run in hand, which lasts up to EVENT_LOG_TIME_BUDGET (10 s by default).
DEFAULT_TIMEOUT = 30.0
# How long an answer waits in the cache for an asker that may have given up.
ANSWER_TTL = 60
ANSWER_KEY = "event_log:query:{}"
STATEMENT_MAX_LENGTH = 100_000
READ_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN")
# Statements whose rows can be limited by wrapping them in a SELECT.
_WRAPPABLE = ("SELECT", "WITH")
# Quoted text and comments, so the checks below read only the statement's own words.
_QUOTED_OR_COMMENT = re.compile(
    r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`|--[^\n]*|#[^\n]*|/\*.*?\*/""",
    re.S,
)
_INTO_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.I)
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
_ALREADY_READ_ONLY = re.compile(r"Cannot modify 'readonly' setting in readonly mode")


class QueryRefusedError(ValueError):
    """The statement is not one read-only statement; nothing was sent to ClickHouse."""


class EngineBusyError(ClickHouseError):
    """The embedded engine is held by a process that did not answer in time."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and rows (JSON-safe values); ``truncated`` when rows were left out."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    limit: int = DEFAULT_LIMIT
    # Who ran it: "server", "embedded" (this process) or "engine owner" (another).
    via: str = field(default="server")

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "truncated": self.truncated,
            "limit": self.limit,
            "via": self.via,
        }


def check_statement(statement: str) -> str:
    """The statement without its trailing semicolon, or :class:`QueryRefusedError`.

    Accepts exactly one SELECT, WITH, SHOW, DESCRIBE (DESC) or EXPLAIN statement.
    """
    text = statement.strip()
    if not text:
        raise QueryRefusedError("empty statement: give one SELECT, SHOW, DESCRIBE or EXPLAIN")
    if len(text) > STATEMENT_MAX_LENGTH:
        raise QueryRefusedError(f"statement longer than {STATEMENT_MAX_LENGTH} characters")
    code = _words_only(text)
    body = code.rstrip().rstrip(";").rstrip()
    if ";" in body:
        raise QueryRefusedError("one statement only: remove everything after the first ';'")
    match = _FIRST_WORD.match(body)
    keyword = match.group(1).upper() if match else ""
    if keyword not in READ_KEYWORDS:
        raise QueryRefusedError(
            f"only read-only statements are accepted ({', '.join(READ_KEYWORDS)}); "
            f"got {keyword or 'no keyword'}"
        )
    if _INTO_OUTFILE.search(body):
        raise QueryRefusedError("INTO OUTFILE is not accepted: the rows are printed here")
    # Cut after the statement's last word: a trailing comment would otherwise swallow
    # the closing parenthesis of the wrapper.
    return text[: len(body)]


def _words_only(text: str) -> str:
    """``text`` as long as it was, quoted text as ``_`` and comments as blanks."""

    def blank(match: re.Match[str]) -> str:
        token = match.group()
        return ("_" if token[0] in "'\"`" else " ") * len(token)

    return _QUOTED_OR_COMMENT.sub(blank, text)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryRefusedError(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def run_readonly(ch: Client, statement: str, *, limit: int = DEFAULT_LIMIT) -> QueryResult:
    """Run one checked statement with ``readonly = 1``, at most ``limit`` rows back.

    Raises :class:`QueryRefusedError` (nothing sent) or :class:`ClickHouseError`.
    """
    text = check_statement(statement)
    check_limit(limit)
    match = _FIRST_WORD.match(_words_only(text))
    if match and match.group(1).upper() in _WRAPPABLE:
        text = f"SELECT * FROM (\n{text}\n) LIMIT {limit + 1}"  # noqa: S608 (checked read-only)
    settings = _readonly_setting(ch)
    try:
        result = ch.query(text, settings=settings)
    except Exception as exc:
        error = ClickHouseError.from_exception(exc)
        if not (settings and _ALREADY_READ_ONLY.search(str(error))):
            raise error from exc
        # The session reads only already (a profile set readonly = 2 after the client
        # connected): ClickHouse refuses to be told again, and needs not be.
        try:
            result = ch.query(text)
        except Exception as again:
            raise ClickHouseError.from_exception(again) from again
    rows = [[_jsonable(value) for value in row] for row in result.result_rows[: limit + 1]]
    return QueryResult(
        columns=list(result.column_names),
        rows=rows[:limit],
        truncated=len(rows) > limit,
        limit=limit,
    )


def _readonly_setting(ch: Client) -> dict[str, Any]:
    """``{"readonly": 1}``, or nothing when the session reads only already.

    A user whose profile sets ``readonly`` (Compose's ``reader``: 2, fixed by a
    constraint) may not change it, even to 1: ClickHouse answers code 164, "Cannot
    modify 'readonly' setting in readonly mode". Such a session writes nothing anyway.
    """
    known = getattr(ch, "server_settings", None) or {}
    current = known.get("readonly")
    try:
        if int(getattr(current, "value", current) or 0) > 0:
            return {}
    except (TypeError, ValueError):
        pass
    return {"readonly": 1}


def query_event_log(
    statement: str,
    *,
    limit: int = DEFAULT_LIMIT,
    url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> QueryResult:
    """Run a read-only query wherever ClickHouse is, in every mode (module docstring).

    Raises :class:`QueryRefusedError` before anything is sent, :class:`EngineBusyError`
    when the embedded engine's owner does not answer within ``timeout`` seconds, and
    :class:`ClickHouseError` for whatever ClickHouse refuses.
    """
    statement = check_statement(statement)
    check_limit(limit)
    url = url or clickhouse.clickhouse_url()
    path = clickhouse.embedded_path(url)
    if path is None:
        return _directly(url, statement, limit, via="server")
    if engine_holder(path) is None:
        try:
            return _directly(url, statement, limit, via="embedded")
        except ClickHouseError:
            if engine_holder(path) is None:
                raise
            # Taken between the look and the open: ask the process that took it.
    return ask_engine_owner(statement, limit=limit, url=url, timeout=timeout)


def _directly(url: str, statement: str, limit: int, *, via: str) -> QueryResult:
    with clickhouse.client(url) as ch:
        result = run_readonly(ch, statement, limit=limit)
    return QueryResult(result.columns, result.rows, result.truncated, limit, via)


def engine_holder(path: Path) -> str | None:
    """Who holds the embedded engine at ``path`` (its status file's text), or None.

    The engine keeps an exclusive ``flock`` on ``<path>/status`` while it is open;
    a shared lock taken for an instant here tells whether anyone holds it.
    """
    status = path / "status"
    try:
        handle = status.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read(500).decode(errors="replace")
            return " ".join(text.split()) or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def ask_engine_owner(
    statement: str,
    *,
    limit: int,
    url: str,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> QueryResult:
    """Send the query to the Celery worker that holds the engine; wait for its answer."""
    from event_log.tasks import query_event_log as task  # noqa: PLC0415 (tasks imports this module)

    key = ANSWER_KEY.format(uuid.uuid4().hex)
    # The default queue is the one this stack's worker consumes (CELERY_QUEUE); a
    # query nobody took in time expires there instead of running for nobody.
    queue = task.app.conf.task_default_queue
    try:
        task.apply_async(
            kwargs={"statement": statement, "limit": limit, "answer_key": key},
            queue=queue,
            expires=timeout,
            retry=False,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = cache.get(key)
            if answer is not None:
                cache.delete(key)
                return _from_answer(answer, limit)
            sleep(0.05)
    except (QueryRefusedError, ClickHouseError):
        raise
    except Exception as exc:  # the broker's or the cache's own exception types
        raise EngineBusyError(
            f"the embedded engine at {clickhouse.mask_url(url)} is held by another process, "
            f"and asking it through the broker and the cache failed: {exc}"
        ) from exc
    path = clickhouse.embedded_path(url)
    holder = engine_holder(path) if path else None
    raise EngineBusyError(
        f"no answer within {timeout:g} s from the process holding the embedded engine at "
        f"{clickhouse.mask_url(url)} ({holder or 'no holder now'}): only a running Celery "
        f"worker of this stack (queue {queue!r}) answers; "
        "a relay_events process does not (stop it to query directly)"
    )


def answer_query(
    ch_of_owner: Callable[[], Client], *, statement: str, limit: int, key: str
) -> None:
    """The owner's side: run the query on its own client, leave the answer under ``key``."""
    try:
        result = run_readonly(ch_of_owner(), statement, limit=limit)
        answer: dict[str, Any] = {"ok": True, **result.as_dict()}
    except QueryRefusedError as exc:
        answer = {"ok": False, "refused": True, "error": str(exc)}
    except ClickHouseError as exc:
        answer = {"ok": False, "error": str(exc)[:2000], "code": exc.code}
    cache.set(key, answer, timeout=ANSWER_TTL)


def _from_answer(answer: dict[str, Any], limit: int) -> QueryResult:
    if answer.get("ok"):
        return QueryResult(
            answer["columns"], answer["rows"], answer["truncated"], limit, "engine owner"
        )
    if answer.get("refused"):
        raise QueryRefusedError(answer["error"])
    raise ClickHouseError(answer["error"], code=answer.get("code"))


def _jsonable(value: Any) -> Any:
    """A value JSON can carry, as the table output prints it."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list | tuple | set):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)  # UUID, Decimal, IP addresses and the rest: their text
