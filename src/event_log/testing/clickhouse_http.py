"""A ClickHouse HTTP front end over the embedded engine, able to misbehave on purpose.

No ClickHouse server can run where the test suite runs, yet production talks to
one over HTTP: clickhouse-connect's HTTP transport (timeouts, status codes, the
``X-ClickHouse-Exception-Code`` header) and the relay's reading of its errors
would otherwise never meet a fault here. This server speaks the subset of the
ClickHouse HTTP interface clickhouse-connect uses, executes every statement on
the real engine (chdb) of this process, and answers like a server: the engine's
result bytes in the format the query asked for, ``X-ClickHouse-Summary``, and on
failure ``Code: N. DB::Exception: …`` with the code in its header.

Faults are armed per request (:meth:`ClickHouseHTTP.arm`) and disarm themselves
after ``times`` matching requests:

- ``Delay``: answer normally after a pause;
- ``DropBeforeBody``: close the connection before the statement runs, without an
  answer (nothing runs; the body is left unread when the statement is in the URL);
- ``DropAfterExecute``: run the statement, then close without answering
  (the client sees a dropped connection, the rows landed);
- ``ServerError``: a ClickHouse error (5xx, exception code, nothing runs);
- ``LateExecute``: read the body, wait (longer than the client's timeout), then
  run the statement anyway: the insert lands after the client gave up;
- ``ProxyStatus``: a status from something in front of ClickHouse (a proxy's
  413) without a ClickHouse exception code; nothing runs.

Several processes can share one engine through it, which the embedded engine
alone forbids (one process owns a data folder).
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame  # type: ignore[import-untyped]
from clickhouse_connect.driver._backend.httpcommon import decompress_response

# URL parameters the HTTP interface consumes itself: never engine settings.
TRANSPORT_PARAMETERS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "buffer_size",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "quota_key",
        "compress",
        "decompress",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
    }
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+([`\w.]+)", re.IGNORECASE)
_INSERT_FORMAT = re.compile(
    r"^(?P<head>\s*INSERT\s+INTO\s+.+?)\s+FORMAT\s+(?P<fmt>\w+)\s*$", re.IGNORECASE | re.DOTALL
)
_CODE = re.compile(r"Code: (\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*$")

# ClickHouse answers some error codes with a 4xx status (src/Server/HTTPHandler.cpp);
# the rest are 500. The code in the header is what a client should read.
_STATUS_BY_CODE = {
    **dict.fromkeys((6, 26, 27, 38, 41, 53, 62, 69, 70, 72, 117, 131, 321, 469), 400),
    **dict.fromkeys((60, 81), 404),
    516: 401,
}


@dataclass(frozen=True, slots=True)
class Request:
    """What a fault's predicate sees of one request."""

    method: str
    path: str
    params: dict[str, str]
    statement: str  # the SQL text, without an insert's data
    body_size: int  # bytes the client announced

    @property
    def insert_table(self) -> str | None:
        """The table of an INSERT, unqualified and unquoted; None for other statements."""
        match = _INSERT.match(self.statement)
        if match is None:
            return None
        return match.group(1).replace("`", "").rsplit(".", 1)[-1]


Predicate = Callable[[Request], bool]


def inserts_into(table: str) -> Predicate:
    """Matches INSERTs into ``table``."""
    return lambda request: request.insert_table == table


def any_request(request: Request) -> bool:
    return True


@dataclass(slots=True)
class Fault:
    """Applies to the next ``times`` requests that ``match``."""

    match: Predicate
    times: int = 1
    hits: int = field(default=0, init=False)


@dataclass(slots=True)
class Delay(Fault):
    seconds: float = 1.0


@dataclass(slots=True)
class DropBeforeBody(Fault):
    pass


@dataclass(slots=True)
class DropAfterExecute(Fault):
    pass


@dataclass(slots=True)
class ServerError(Fault):
    status: int = 500
    code: int = 1002
    message: str = "Unexpected error"
    name: str = "UNKNOWN_EXCEPTION"


@dataclass(slots=True)
class LateExecute(Fault):
    seconds: float = 2.0


@dataclass(slots=True)
class ProxyStatus(Fault):
    status: int = 413
    body: str = "<html><head><title>413 Request Entity Too Large</title></head></html>\n"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as the front end handled it (for assertions)."""

    request: Request
    executed: bool
    answered: bool
    error_code: int | None = None
    fault: str | None = None


class EngineError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Engine:
    """The embedded engine, one call at a time; each call gets a fresh session."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # Held open for the server's lifetime: the engine lives while a handle does.
        self._anchor: Any = chdb.connect(str(path))
        self.version, self.timezone = (
            self.execute("SELECT version(), timezone()")[0].strip().split(b"\t")
        )

    def execute(
        self,
        statement: str,
        data: bytes = b"",
        *,
        database: str | None = None,
        settings: dict[str, str] | None = None,
        parameters: dict[str, str] | None = None,
        default_format: str = "TabSeparated",
    ) -> tuple[bytes, dict[str, str]]:
        """Run one statement, with an INSERT's ``data``; returns its output and an
        X-ClickHouse-Summary. Raises :class:`EngineError` with the engine's code."""
        insert = _INSERT_FORMAT.match(statement)
        found = _TRAILING_FORMAT.search(statement)
        fmt = found.group(1) if found and not insert else default_format
        with tempfile.TemporaryDirectory() as scratch:
            if insert and data:
                # The data may be binary (Native): the engine reads it from a file.
                path = Path(scratch) / "data"
                path.write_bytes(data)
                quoted = str(path).replace("\\", "\\\\").replace("'", "\\'")
                statement = (
                    f"{insert.group('head')} FROM INFILE '{quoted}' FORMAT {insert.group('fmt')}"
                )
            elif data:
                try:
                    statement = f"{statement}\n{data.decode()}"
                except UnicodeDecodeError as exc:
                    message = (
                        f"Code: 27. DB::Exception: {exc} (CANNOT_PARSE_INPUT_ASSERTION_FAILED)"
                    )
                    raise EngineError(message, 27) from exc
            with self._lock:
                conn = chdb.connect(str(self.path))
                try:
                    if database:
                        conn.query(f"USE `{database}`", "TabSeparated")
                    for key, value in (settings or {}).items():
                        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
                        conn.query(f"SET {key} = '{escaped}'", "TabSeparated")
                    started = time.perf_counter_ns()
                    result = conn.query(statement, fmt, params=parameters or {})
                    elapsed = time.perf_counter_ns() - started
                except Exception as exc:
                    message = str(exc).strip()
                    match = _CODE.search(message)
                    raise EngineError(message, int(match.group(1)) if match else 1002) from exc
                finally:
                    conn.close()
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": "0",
            "elapsed_ns": str(elapsed),
        }
        return bytes(result.bytes() or b""), summary

    def close(self) -> None:
        with self._lock:
            self._anchor.close()


class ClickHouseHTTP:
    """The front end: start(), arm faults, read ``outcomes``, stop()."""

    def __init__(self, path: Path, *, database: str = "default") -> None:
        self.engine = Engine(path)
        self.database = database
        self.outcomes: list[Outcome] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._idle: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.front_end = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """A CLICKHOUSE_URL for clients: the default user, no password."""
        return f"http://default:@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> ClickHouseHTTP:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (late inserts land), close the engine."""
        self._server.shutdown()
        with self._lock:
            for sock in self._idle:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads
        self._thread.join()
        self.engine.close()

    # -- faults ----------------------------------------------------------------

    def arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def disarm(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.hits < fault.times and fault.match(request):
                    fault.hits += 1
                    return fault
        return None

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _idle_socket(self, sock: socket.socket, *, idle: bool) -> None:
        with self._lock:
            if idle:
                self._idle.add(sock)
            else:
                self._idle.discard(sock)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # stop() waits for late inserts to land
    block_on_close = True
    front_end: ClickHouseHTTP


class _Dropped(Exception):
    """The connection was closed on purpose."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def handle_one_request(self) -> None:
        front = self.server.front_end
        front._idle_socket(self.connection, idle=True)
        try:
            super().handle_one_request()
        except (_Dropped, ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            front._idle_socket(self.connection, idle=False)

    def parse_request(self) -> bool:
        self.server.front_end._idle_socket(self.connection, idle=False)
        return super().parse_request()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # -- one request -----------------------------------------------------------

    def _serve(self) -> None:
        front = self.server.front_end
        parts = urlsplit(self.path)
        if parts.path.rstrip("/") == "/ping":
            self._answer(200, b"Ok.\n", {})
            return
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        announced = int(self.headers.get("Content-Length") or 0)
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        query = params.get("query")
        body: bytes | None = None
        if query is None:  # the statement is in the body, an INSERT's data after it
            body = self._read_body(announced, chunked=chunked)
            statement, body = _split_body(self._decoded(body))
        else:
            statement = query
        request = Request(
            method=self.command,
            path=parts.path,
            params=params,
            statement=statement,
            body_size=announced,
        )
        fault = front._take_fault(request)
        name = type(fault).__name__ if fault else None
        if isinstance(fault, DropBeforeBody):
            front._record(Outcome(request, executed=False, answered=False, fault=name))
            self._drop()
        if body is None:
            body = self._decoded(self._read_body(announced, chunked=chunked))
        if isinstance(fault, Delay):
            time.sleep(fault.seconds)
        if isinstance(fault, ServerError):
            front._record(Outcome(request, False, True, fault.code, name))
            self._error(fault.status, fault.code, f"{fault.message} ({fault.name})")
            return
        if isinstance(fault, ProxyStatus):
            front._record(Outcome(request, False, True, None, name))
            self._answer(fault.status, fault.body.encode(), {"Content-Type": "text/html"})
            return
        if isinstance(fault, LateExecute):
            time.sleep(fault.seconds)  # the client gives up meanwhile
        settings = {
            key: value
            for key, value in params.items()
            if key not in TRANSPORT_PARAMETERS and not key.startswith("param_")
        }
        parameters = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        database = params.get("database") or front.database
        try:
            output, summary = front.engine.execute(
                statement,
                body,
                database=database,
                settings=settings,
                parameters=parameters,
                default_format=params.get("default_format", "TabSeparated"),
            )
        except EngineError as exc:
            front._record(Outcome(request, False, True, exc.code, name))
            self._error(_STATUS_BY_CODE.get(exc.code, 500), exc.code, str(exc), raw=True)
            return
        if isinstance(fault, DropAfterExecute):
            front._record(Outcome(request, True, False, None, name))
            self._drop()
        front._record(Outcome(request, True, not isinstance(fault, LateExecute), None, name))
        found = _TRAILING_FORMAT.search(request.statement)
        fmt = found.group(1) if found and not request.insert_table else "TabSeparated"
        with suppress(OSError):
            self._answer(
                200,
                output,
                {
                    "X-ClickHouse-Summary": json.dumps(summary),
                    "X-ClickHouse-Format": fmt,
                    "X-ClickHouse-Timezone": front.engine.timezone.decode(),
                    "X-ClickHouse-Query-Id": params.get("query_id", ""),
                    "Content-Type": "application/octet-stream",
                },
            )

    def _read_body(self, length: int, *, chunked: bool) -> bytes:
        if not chunked:
            return self.rfile.read(length) if length else b""
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _decoded(self, body: bytes) -> bytes:
        encoding = self.headers.get("Content-Encoding")
        if not encoding or not body:
            return body
        if encoding == "lz4":
            # A streamed body is a sequence of LZ4 frames, one per block.
            frames = []
            while body:
                decompressor = lz4.frame.LZ4FrameDecompressor()
                frames.append(decompressor.decompress(body))
                body = decompressor.unused_data
            return b"".join(frames)
        return decompress_response(body, encoding)

    def _drop(self) -> None:
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    def _error(self, status: int, code: int, message: str, *, raw: bool = False) -> None:
        version = self.server.front_end.engine.version.decode()
        text = message if raw else f"Code: {code}. DB::Exception: {message}"
        if not _NAME.search(text) and raw:
            text = f"{text} (UNKNOWN)"
        self._answer(
            status,
            f"{text} (version {version})\n".encode(),
            {"X-ClickHouse-Exception-Code": str(code), "Content-Type": "text/plain"},
        )

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


def _split_body(body: bytes) -> tuple[str, bytes]:
    """A body holding ``INSERT … FORMAT f`` and its data: (the statement, the data).
    Any other body: (the whole of it, no data)."""
    first, _, rest = body.partition(b"\n")
    head = first.decode(errors="replace")
    if _INSERT_FORMAT.match(head):
        return head, rest
    return body.decode(errors="replace"), b""


@contextmanager
def serving(path: Path, *, database: str = "default") -> Iterator[ClickHouseHTTP]:
    """A running front end over the engine in ``path``, stopped on exit."""
    front = ClickHouseHTTP(path, database=database).start()
    try:
        yield front
    finally:
        front.stop()
