"""The batch chain: tamper evidence for the event log (docs/adr/0015-tamper-evident-batch-chain.md).

Every change the event log makes to what ClickHouse holds is an *entry* of one
chain, appended in the PostgreSQL transaction that makes it final:

- ``delivery``: rows of a batch ClickHouse holds (each row carries its ``batch_id``);
- ``dead_letter``: rows of a batch that went to the dead-letter table instead;
- ``replay``: dead letters sent back to the outbox (delivered later as a ``delivery``);
- ``erasure``: rows whose personal fields an erasure overwrote, with their new digests.

An entry lists its rows as (event id, row digest) pairs sorted by event id. A row's
digest is SHA-256 of its canonical text: the columns of ``sql.CLICKHOUSE_COLUMNS`` as
text, joined by tabs, with backslash, tab and newline escaped (``\\\\``, ``\\t``,
``\\n``) and NULL as empty text (a NULL sent to a column that is not Nullable is
stored as its default). The relay computes it from the TabSeparated rows it
sends; ClickHouse computes the same from the rows it holds (``sql.row_digest_sql``),
so a row can be checked without leaving ClickHouse. An entry's digest covers its
kind, batch and pairs; the chain's digest at position *n* is
``sha256(digest(n-1) || n || entry digest)``, from an all-zero genesis.

Entries live in PostgreSQL (``event_log_chain``, with the head in
``event_log_chain_head``) and are copied to ClickHouse (``<table>_batches``) right
after; a copy that failed is written by the next verification (``copy_missing``).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from clickhouse_connect.driver.client import Client

from event_log import clickhouse, sql
from event_log.clickhouse import ClickHouseError
from event_log.schema.ddl import chain_copy_table as copy_table

logger = structlog.get_logger(__name__)

GENESIS = bytes(32)
# The row digest of a replay's pairs: the rows are chained when delivered again.
NO_DIGEST = bytes(32)
ID_BYTES = 16
DIGEST_BYTES = 32
PAIR_BYTES = ID_BYTES + DIGEST_BYTES
NIL = uuid.UUID(int=0)

DELIVERY = "delivery"
DEAD_LETTER = "dead_letter"
REPLAY = "replay"
ERASURE = "erasure"
KINDS = (DELIVERY, DEAD_LETTER, REPLAY, ERASURE)

# The batch id the relay appends to each row: a tab and 36 characters, then the newline.
_BATCH_ID_SUFFIX = len("\t") + 36 + len("\n")
# PostgreSQL's COPY escapes these four as well; the canonical text keeps them raw. Its
# NULL (\N, only ever a whole field) is empty text.
_COPY_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_RAW = {b"b": b"\b", b"f": b"\f", b"r": b"\r", b"v": b"\v", b"N": b""}
# A NULL field: \N with a separator (tab, or the newline between rows) or nothing on
# either side. A backslash right after a separator starts an escape, so this never
# takes the N of an escaped backslash (\\N). The commonest escape by far (an envelope
# without actor or request), removed here without a Python call per match.
# (The backslash comes first, so the search skips to each one.)
_NULL_FIELD = re.compile(rb"\\(?<![^\t\n]\\)N(?![^\t\n])")


def _canonical_escape(match: re.Match[bytes]) -> bytes:
    return _RAW.get(match.group(1), match.group(0))


def canonical_rows(rows: list[bytes]) -> list[bytes]:
    """The canonical text of rows the relay sends (``sql.RELAY_COLUMNS`` in COPY's text
    format), each without its batch id and newline."""
    # One search and one substitution over all the rows are cheaper than one per row;
    # only a row with an escape other than NULL (rare: control characters, a
    # backslash in the text) takes the substitution that calls back per match.
    block = b"\n".join(rows)
    if b"\\" not in block:
        return rows
    block = _NULL_FIELD.sub(b"", block)
    rows = block.split(b"\n")
    if b"\\" not in block:
        return rows
    return [_COPY_ESCAPE.sub(_canonical_escape, row) if b"\\" in row else row for row in rows]


def pairs_of(lines: Iterable[bytes]) -> bytes:
    """(event id, row digest) of each row, sorted by event id, as one byte string."""
    # A line starts with its event id in lowercase hexadecimal with fixed hyphens, so
    # the lines' order is the ids' byte order; the ids are decoded in one call.
    rows = sorted(lines)
    ids = bytes.fromhex(b"".join(line[:36] for line in rows).replace(b"-", b"").decode())
    sha256 = hashlib.sha256
    plain = canonical_rows([line[:-_BATCH_ID_SUFFIX] for line in rows])
    digests = [sha256(row).digest() for row in plain]
    return b"".join(
        [ids[i * ID_BYTES : (i + 1) * ID_BYTES] + digest for i, digest in enumerate(digests)]
    )


def pack(pairs: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    return b"".join(event_id.bytes + digest for event_id, digest in sorted(pairs))


def unpack(row_digests: bytes) -> list[tuple[uuid.UUID, bytes]]:
    data = bytes(row_digests)
    return [
        (uuid.UUID(bytes=data[i : i + ID_BYTES]), data[i + ID_BYTES : i + PAIR_BYTES])
        for i in range(0, len(data), PAIR_BYTES)
    ]


def entry_digest(kind: str, batch_id: uuid.UUID | None, row_digests: bytes) -> bytes:
    return hashlib.sha256(
        b"event_log chain entry 1\n"
        + kind.encode()
        + b"\n"
        + (batch_id or NIL).bytes
        + bytes(row_digests)
    ).digest()


def link(prev_digest: bytes, position: int, entry: bytes) -> bytes:
    """The chain's digest at ``position`` (as sql.APPEND_CHAIN_ENTRY computes it)."""
    return hashlib.sha256(
        bytes(prev_digest) + position.to_bytes(8, "big", signed=True) + bytes(entry)
    ).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as the ledger holds it."""

    position: int
    batch_id: uuid.UUID | None
    kind: str
    recorded_at: datetime
    rows: int
    first_event_at: datetime | None
    last_event_at: datetime | None
    row_digests: bytes
    entry_digest: bytes
    prev_digest: bytes
    digest: bytes

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        values = list(row)
        for i in (7, 8, 9, 10):
            values[i] = bytes(values[i])
        return cls(*values)

    def pairs(self) -> list[tuple[uuid.UUID, bytes]]:
        return unpack(self.row_digests)

    def copy_line(self) -> bytes:
        """This entry as a TabSeparated row of the ClickHouse copy (sql.CHAIN_COPY_COLUMNS)."""
        fields = [
            str(self.position).encode(),
            str(self.batch_id or NIL).encode(),
            _tsv(self.kind.encode()),
            _tsv_time(self.recorded_at),
            str(self.rows).encode(),
            _tsv_time(self.first_event_at),
            _tsv_time(self.last_event_at),
            _tsv(self.row_digests),
            self.entry_digest.hex().encode(),
            self.prev_digest.hex().encode(),
            self.digest.hex().encode(),
        ]
        return b"\t".join(fields) + b"\n"


def _tsv(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")


def _tsv_time(moment: datetime | None) -> bytes:
    if moment is None:
        return b"\\N"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f").encode()


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry computed before the transaction that appends it (no lock held meanwhile)."""

    kind: str
    batch_id: uuid.UUID | None
    rows: int
    row_digests: bytes
    first_event_at: str | None = None
    last_event_at: str | None = None


def pending_rows(kind: str, batch_id: uuid.UUID, lines: Sequence[bytes]) -> PendingEntry | None:
    """The entry for rows of a batch the relay sent (TabSeparated lines); None for none."""
    if not lines:
        return None
    # The event time is the third field, in COPY_BATCH's fixed format: text order is
    # time order. Only deliveries need the span (where the verification looks): rows
    # ClickHouse refused may have any time, or none.
    times = [line.split(b"\t", 3)[2] for line in lines] if kind == DELIVERY else []
    return PendingEntry(
        kind=kind,
        batch_id=batch_id,
        rows=len(lines),
        row_digests=pairs_of(lines),
        first_event_at=min(times).decode() + "+00" if times else None,
        last_event_at=max(times).decode() + "+00" if times else None,
    )


def pending_pairs(kind: str, pairs: Iterable[tuple[uuid.UUID, bytes]]) -> PendingEntry:
    """An entry of no batch (a replay, an erasure) for (event id, row digest) pairs."""
    packed = pack(pairs)
    return PendingEntry(
        kind=kind, batch_id=None, rows=len(packed) // PAIR_BYTES, row_digests=packed
    )


def append(cur: Any, pending: PendingEntry) -> Entry:
    """Append ``pending`` in the caller's transaction; the head stays locked until it ends."""
    parameters = entry_parameters(pending)
    cur.execute(sql.APPEND_CHAIN_ENTRY, parameters)
    return appended_entry(pending, parameters, cur.fetchone())


def entry_parameters(pending: PendingEntry) -> dict[str, Any]:
    """The parameters of sql.CHAIN_HEAD_MOVE and sql.CHAIN_ENTRY_INSERT for ``pending``."""
    return {
        "genesis": GENESIS,
        "entry_digest": entry_digest(pending.kind, pending.batch_id, pending.row_digests),
        "batch_id": pending.batch_id,
        "kind": pending.kind,
        "rows": pending.rows,
        "first_event_at": pending.first_event_at,
        "last_event_at": pending.last_event_at,
        "row_digests": pending.row_digests,
    }


def appended_entry(pending: PendingEntry, parameters: dict[str, Any], link: Sequence[Any]) -> Entry:
    """The entry as appended: ``link`` is what sql.CHAIN_ENTRY_INSERT returned (position,
    time as text, previous digest, digest)."""
    position, recorded_at, prev_digest, chained = link
    return Entry(
        position=int(position),
        batch_id=pending.batch_id,
        kind=pending.kind,
        recorded_at=_utc(recorded_at),
        rows=pending.rows,
        first_event_at=_utc(pending.first_event_at[:-3]) if pending.first_event_at else None,
        last_event_at=_utc(pending.last_event_at[:-3]) if pending.last_event_at else None,
        row_digests=pending.row_digests,
        entry_digest=parameters["entry_digest"],
        prev_digest=bytes(prev_digest),
        digest=bytes(chained),
    )


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


def copy_to_clickhouse(ch: Client, entries: Sequence[Entry], *, table: str) -> None:
    """Write entries to the ClickHouse copy in one INSERT, once whatever the retries (its
    token names their positions and digests). Raises :class:`ClickHouseError`."""
    if not entries:
        return
    try:
        ch.raw_insert(
            copy_table(table),
            list(sql.CHAIN_COPY_COLUMNS),
            insert_block=b"".join(entry.copy_line() for entry in entries),
            fmt="TabSeparated",
            settings={
                "async_insert": 0,
                "insert_deduplicate": 1,
                "insert_deduplication_token": "chain-"
                + hashlib.sha256(b"".join(e.digest for e in entries)).hexdigest(),
            },
        )
    except Exception as exc:
        raise ClickHouseError.from_exception(exc) from exc


def copy_after_finish(
    connect: Callable[[], Client], entries: Sequence[Entry], *, table: str
) -> bool:
    """The relay's copy, right after the finish: never raises. A failure is logged and
    left to the next verification, which copies what the ClickHouse copy lacks."""
    if not entries:
        return True
    try:
        copy_to_clickhouse(connect(), entries, table=table)
    except Exception as exc:  # the batch is finished: nothing may undo that now
        error = exc.summary if isinstance(exc, ClickHouseError) else str(exc)
        logger.warning(
            "chain_entry_copy_failed", positions=[e.position for e in entries], error=error[:500]
        )
        return False
    return True


def stored_copies(ch: Client, *, table: str, first: int, last: int) -> dict[int, set[str]]:
    """Position -> the digests (hex) the ClickHouse copy holds for it, in [first, last]."""
    copies: dict[int, set[str]] = {}
    statement = sql.CHAIN_COPY_DIGESTS.format(table=copy_table(table), first=first, last=last)
    rows = clickhouse.query_rows(ch, statement)
    for position, digest in rows:
        copies.setdefault(int(position), set()).add(str(digest))
    return copies
