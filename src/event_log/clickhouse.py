"""ClickHouse access for the event log: the client, the insert, and what errors mean.

Whether a failure is *transient* (retry the same batch later) or about the
*data* (isolate the rows, dead-letter them) is decided here and nowhere else:
:class:`ClickHouseError.transient`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from django.conf import settings

from event_log import sql

# Error codes that mean "ClickHouse will never accept these rows": parse and type
# errors, values out of range, violated CHECK constraints. Everything else —
# connection refused, timeouts, 5xx, TOO_MANY_PARTS (252), memory limits,
# a missing table — is transient: the batch waits and is sent again.
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
_CODE = re.compile(r"Code: (\d+)")


class ClickHouseError(Exception):
    """A failed ClickHouse call, with what an operator needs to act on it."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def transient(self) -> bool:
        return self.code not in DATA_ERROR_CODES

    @classmethod
    def from_exception(cls, exc: BaseException) -> ClickHouseError:
        message = str(exc).strip() or type(exc).__name__
        match = _CODE.search(message)
        return cls(message[:2000], code=int(match.group(1)) if match else None)


def mask_url(url: str) -> str:
    """The URL with its password replaced, safe to log and print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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
        kwargs.setdefault("connect_timeout", min(timeout, 10.0))
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


def insert_tsv(ch: Client, *, table: str, block: bytes, token: str) -> None:
    """Insert a TabSeparated block in one INSERT, deduplicated by ``token``.

    ``async_insert=0``: async inserts are not deduplicated by default (and are
    on by default from ClickHouse 26.2), which would break exactly-once.
    """
    try:
        ch.raw_insert(
            table,
            list(sql.CLICKHOUSE_COLUMNS),
            insert_block=block,
            fmt="TabSeparated",
            settings={"insert_deduplication_token": token, "async_insert": 0},
        )
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc
