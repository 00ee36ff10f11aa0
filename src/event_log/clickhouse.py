"""ClickHouse access for the event log: the client, the insert, and what errors mean.

Whether a failure is *transient* (retry the same batch later) or about the
*data* (isolate the rows, dead-letter them) is decided here and nowhere else:
:class:`ClickHouseError.transient`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from django.conf import settings

from event_log import sql

# Error codes that mean "ClickHouse will never accept these rows": parse and type
# errors, values out of range, violated CHECK constraints.
DATA_ERROR_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        469,  # VIOLATED_CONSTRAINT
    }
)
MEMORY_LIMIT_EXCEEDED = 241
TOO_MANY_PARTS = 252  # also raised for "too many partitions for single INSERT block"
TIMEOUT_EXCEEDED = 159
SOCKET_TIMEOUT = 209
# Longest the relay's client waits to connect to a server (a shorter
# EVENT_LOG_INSERT_TIMEOUT shortens it).
CONNECT_TIMEOUT_MAX = 10.0
_CODE = re.compile(r"Code: (\d+)")
_ROW = re.compile(r"at row (\d+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_TOO_MANY_PARTITIONS = re.compile(r"too many partitions for (a )?single insert block", re.I)
_TIMED_OUT = re.compile(r"timed? ?out|timeout", re.I)
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]{2,})\)")
_EXCEPTION_TEXT = re.compile(r"DB::Exception: ([^\n]*)")
_QUOTED = re.compile(r"""\s*(?:before:|Column values:|['"<]).*$""")
_NOISE = re.compile(
    r"^(?:Code: \d+\. DB::Exception: )+"
    r"|\s*\((?:[A-Z][A-Z0-9_]+|version [^)]*|at row \d+)\)"
)
_BAD_COLUMN = re.compile(r"name: (\w+),[^\n]*ERROR|Column values: (\w+) =")


class Failure(enum.Enum):
    """What a failed ClickHouse call asks of the relay."""

    TRANSIENT = "transient"  # the same rows, later
    DATA = "data"  # these rows will never be accepted: isolate and dead-letter them
    TOO_LARGE = "too_large"  # this request is too big (a proxy's 413, memory): split it
    TOO_MANY_PARTITIONS = "too_many_partitions"  # one INSERT spans too many months: split


class ClickHouseError(Exception):
    """A failed ClickHouse call, with what an operator needs to act on it.

    ``code`` is ClickHouse's error code (from the driver, which reads the server's
    ``X-ClickHouse-Exception-Code`` header, else from the message); ``row`` the
    1-based row of the INSERT that ClickHouse names as the bad one, when it does.
    """

    def __init__(
        self, message: str, *, code: int | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        match = _ROW.search(message)
        self.row = int(match.group(1)) if match else None

    @property
    def failure(self) -> Failure:
        """The one place that decides what a ClickHouse failure means."""
        if self.code in DATA_ERROR_CODES:
            return Failure.DATA
        if self.code == TOO_MANY_PARTS and _TOO_MANY_PARTITIONS.search(str(self)):
            return Failure.TOO_MANY_PARTITIONS
        if self.http_status == 413 or self.code == MEMORY_LIMIT_EXCEEDED:
            return Failure.TOO_LARGE
        return Failure.TRANSIENT

    @property
    def summary(self) -> str:
        """The error without the data ClickHouse quotes in it: code, name, row, column.

        ClickHouse's messages for refused rows quote the rows (parsed text of the
        neighbours, ``Column values: …``), which can hold personal data; logs, Sentry
        and the error columns get this instead. The dead letter keeps the row itself.
        """
        message = str(self)
        texts = _EXCEPTION_TEXT.findall(message)
        if not texts:
            return message[:500]
        names = _NAME.findall(message)
        description = _QUOTED.sub("", _NOISE.sub("", texts[0])).rstrip(" :.,")
        parts = [f"Code: {self.code}" if self.code is not None else "ClickHouse error"]
        if names:
            parts[0] += f" ({names[-1]})"
        if self.row is not None:
            parts.append(f"at row {self.row}")
        column = _BAD_COLUMN.search(message)
        if column:
            parts.append(f"column {column.group(1) or column.group(2)}")
        return f"{', '.join(parts)}: {description}"

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later; split or isolate otherwise."""
        return self.failure is Failure.TRANSIENT

    @property
    def timed_out(self) -> bool:
        """The outcome is unknown: the server may still be working on the request."""
        return self.code in {TIMEOUT_EXCEEDED, SOCKET_TIMEOUT} or bool(_TIMED_OUT.search(str(self)))

    @classmethod
    def from_exception(cls, exc: BaseException) -> ClickHouseError:
        if isinstance(exc, ClickHouseError):
            return exc
        message = str(exc).strip() or type(exc).__name__
        code = getattr(exc, "code", None)
        if not isinstance(code, int):
            match = _CODE.search(message)
            code = int(match.group(1)) if match else None
        status = _HTTP_STATUS.search(message)
        return cls(message[:2000], code=code, http_status=int(status.group(1)) if status else None)


def mask_url(url: str) -> str:
    """The URL with its password (and any ``password=`` query parameter) replaced, safe
    to log and print, whatever characters the password holds; never raises
    (``core.dsn``, shared with the logs and the settings' error messages)."""
    from core.dsn import mask_url as mask  # noqa: PLC0415 (kept within this function)

    return mask(url)


def clickhouse_url() -> str:
    return str(settings.CLICKHOUSE_URL)


def embedded_path(url: str) -> Path | None:
    """The data folder when ``url`` selects the embedded engine, else None."""
    if not url.startswith("chdb:///"):
        return None
    return Path(urlsplit(url).path)


def connect(url: str | None = None, *, timeout: float | None = None, **kwargs: Any) -> Client:
    """A clickhouse-connect client for ``url`` (default ``settings.CLICKHOUSE_URL``).

    ``timeout`` bounds each request to a server: an insert that outlives it is an
    unknown outcome, retried under the same token. Raises :class:`ClickHouseError`
    (transient) when the server cannot be reached.
    """
    url = url or clickhouse_url()
    path = embedded_path(url)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    elif timeout is not None:
        kwargs.setdefault("send_receive_timeout", timeout)
        kwargs.setdefault("connect_timeout", min(timeout, CONNECT_TIMEOUT_MAX))
    if urlsplit(url).scheme == "https":
        # clickhouse-connect infers TLS from the port, not from the DSN's scheme:
        # without this, https://host:9000 would be spoken to in plain HTTP.
        kwargs.setdefault("secure", True)
    try:
        return clickhouse_connect.get_client(dsn=url, **kwargs)
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc


@contextmanager
def client(url: str | None = None) -> Iterator[Client]:
    """A client that is closed on exit, so another process may open the embedded engine."""
    ch = connect(url)
    try:
        yield ch
    finally:
        ch.close()


def release_engine_memory(ch: Client) -> None:
    """Embedded engine only: give the memory its allocator holds freed back to the OS.

    The embedded engine allocates with jemalloc inside the relay's process and
    keeps pages freed by inserts and merges for reuse, so the process's resident
    set climbs with the largest merges seen while the engine's live memory stays
    a few MiB. ``SYSTEM JEMALLOC PURGE`` hands them back in a few milliseconds
    (figures in docs/performance.md). Never sent to a server, which manages its
    own memory.
    """
    try:
        ch.command("SYSTEM JEMALLOC PURGE")
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc


# Settings every relay INSERT carries, whatever the server's profile says: a profile
# that allows errors would let ClickHouse skip bad rows that the relay then deletes
# from the outbox; async inserts are not deduplicated by default; the text format's
# reading must be exactly what the COPY produces.
INSERT_SETTINGS: dict[str, Any] = {
    "async_insert": 0,
    "insert_deduplicate": 1,
    "deduplicate_insert": "enable",  # the newer name of insert_deduplicate (26.x)
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
    "date_time_input_format": "basic",
    "input_format_tsv_skip_first_lines": 0,
    "input_format_tsv_detect_header": 0,
    "input_format_tsv_allow_variable_number_of_columns": 0,
    "input_format_tsv_empty_as_default": 0,
    "input_format_tsv_crlf_end_of_line": 0,
    "input_format_tsv_skip_trailing_empty_lines": 0,
    "format_tsv_null_representation": "\\N",
    # \N (an infinite time, formatted as NULL) is refused, not read as 1970-01-01.
    "input_format_null_as_default": 0,
    "throw_on_max_partitions_per_insert_block": 1,
}
# Those a server cannot do without; the others are sent where the server knows them.
REQUIRED_INSERT_SETTINGS = frozenset(
    {
        "async_insert",
        "insert_deduplicate",
        "input_format_allow_errors_num",
        "input_format_allow_errors_ratio",
    }
)


def insert_settings(ch: Client, *, token: str, timeout: float | None = None) -> dict[str, Any]:
    """The pinned settings this server knows, the token, and the server-side time limit."""
    known = getattr(ch, "server_settings", None) or {}
    pinned = {
        name: value
        for name, value in INSERT_SETTINGS.items()
        if name in REQUIRED_INSERT_SETTINGS or name in known
    }
    pinned["insert_deduplication_token"] = token
    if timeout is not None and (not known or "max_execution_time" in known):
        # The server stops working on a request the relay has given up on.
        pinned["max_execution_time"] = int(max(1, timeout))
    return pinned


def insert_tsv(
    ch: Client, *, table: str, block: bytes, token: str, timeout: float | None = None
) -> None:
    """Insert a TabSeparated block of ``sql.RELAY_COLUMNS`` in one INSERT, deduplicated
    by ``token``.

    Sends :data:`INSERT_SETTINGS` (those the server knows) so that no profile
    setting can make ClickHouse skip rows, read the text differently, or insert
    asynchronously without deduplication. Raises :class:`ClickHouseError`.
    """
    try:
        ch.raw_insert(
            table,
            list(sql.RELAY_COLUMNS),
            insert_block=block,
            fmt="TabSeparated",
            settings=insert_settings(ch, token=token, timeout=timeout),
        )
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc


def query_rows(
    ch: Client, statement: str, *, timeout: float | None = None
) -> list[tuple[Any, ...]]:
    """Run a read-only query; raises :class:`ClickHouseError`."""
    settings = {"max_execution_time": int(max(1, timeout))} if timeout is not None else None
    try:
        return [tuple(row) for row in ch.query(statement, settings=settings).result_rows]
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
