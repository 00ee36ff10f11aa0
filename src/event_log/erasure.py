"""Erasure (GDPR Art. 17): a subject's personal fields, everywhere the event log keeps them.

``event_log_erase(subject="user:42")`` overwrites, with :data:`ERASED`, every field
marked :class:`~event_log.events.Personal` in the events whose class declares that
subject (``subject = ("user", "user_id")``), in the order that leaves no copy behind:

1. **the outbox** (one transaction, rows locked): events not yet delivered are
   delivered without the data. A sealed batch is safe to rewrite: the relay re-reads
   its rows (COPY) on every attempt and, before re-sending, looks up which of them
   ClickHouse already holds, so a re-send carries the erased text or nothing;
2. **the dead letters**, in the same transaction (a replay sends the erased text);
3. **ClickHouse**, after any sealed batch holding the subject's rows has been
   delivered or its lease has run out (a relay that read the old text before step 1
   may still be inserting it until then; its lease fences it afterwards): one
   ``ALTER TABLE … UPDATE`` mutation rewriting ``event_context`` of the subject's
   rows, waited for (``mutations_sync = 2``). See docs/adr/0012-erasure-by-mutation.md.

The rewritten rows' new digests are then appended to the batch chain as an
``erasure`` entry (event_log.chain), so ``event_log_verify`` expects the erased text,
and the erasure is published as :class:`~event_log.events.SubjectErased` (counts
and subject id only), in the same transaction. Running it again is harmless: rows
already erased are not rewritten.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from django.db import connection, transaction
from django.db.models import Q

from event_log import chain, clickhouse, publish, sql
from event_log.catalogue import event_classes
from event_log.conf import event_log_settings
from event_log.events import SubjectErased, personal_fields
from event_log.models import DeadLetter, OutboxBatch, OutboxEvent

logger = structlog.get_logger(__name__)

ERASED = "[erased]"
# Rows per ALTER TABLE … UPDATE: each carries its new context inline, and a query
# must stay under max_query_size (256 KiB) with contexts of a few hundred bytes.
CLICKHOUSE_CHUNK = 200


class ErasureError(ValueError):
    """The subject cannot be erased as asked (malformed, or no event type has it)."""


@dataclass(frozen=True)
class SubjectEvents:
    """One event type of a subject kind: where the id is and which fields to erase."""

    event_type: str
    id_field: str
    personal: tuple[str, ...]


@dataclass
class ErasureReport:
    subject: str
    event_types: list[str] = field(default_factory=list)
    outbox_events: int = 0
    in_flight_batches: int = 0
    dead_letters: int = 0
    clickhouse_events: int = 0


def parse_subject(subject: str) -> tuple[str, str, list[SubjectEvents]]:
    """``"user:42"`` → ``("user", "42", [event types about users])``; raises
    :class:`ErasureError` for a malformed subject or a kind no event declares."""
    kind, sep, subject_id = subject.partition(":")
    kind, subject_id = kind.strip(), subject_id.strip()
    if not sep or not kind or not subject_id:
        raise ErasureError(f"a subject is <kind>:<id>, e.g. user:42, not {subject!r}")
    types = [
        SubjectEvents(cls.event_type, cls.subject[1], personal_fields(cls))
        for cls in event_classes()
        if cls.subject is not None and cls.subject[0] == kind and personal_fields(cls)
    ]
    if not types:
        kinds = sorted({c.subject[0] for c in event_classes() if c.subject is not None})
        raise ErasureError(f"no event has personal data of a {kind!r}; subject kinds: {kinds}")
    return kind, subject_id, types


def erased_context(context: str, personal: tuple[str, ...]) -> str | None:
    """``context`` with its personal fields set to :data:`ERASED`; None when there is
    nothing left to erase (already erased, or not JSON: then it is erased whole)."""
    try:
        value = json.loads(context)
    except ValueError:
        return None if context == json.dumps(ERASED) else json.dumps(ERASED)
    if not isinstance(value, dict):
        return None
    if all(value.get(name, ERASED) == ERASED for name in personal):
        return None
    for name in personal:
        if name in value:
            value[name] = ERASED
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _matches(context: str, id_field: str, subject_id: str) -> bool:
    try:
        value = json.loads(context)
    except ValueError:
        return False
    return isinstance(value, dict) and str(value.get(id_field)) == subject_id


def _text_mentions(id_field: str, subject_id: str) -> Q:
    """Rows whose JSON text holds ``"<id_field>":<id>`` as a number or a string (a
    superset: the caller checks the parsed JSON). Never casts: a row that is not
    JSON (a dead letter's often is not) must not fail the query."""
    key = json.dumps(id_field)
    return Q(event_context__contains=f"{key}:{subject_id}") | Q(
        event_context__contains=f"{key}:{json.dumps(subject_id)}"
    )


def _erase_outbox(types: list[SubjectEvents], subject_id: str) -> tuple[int, dict[str, datetime]]:
    """Rewrite the subject's outbox rows; returns (rows, {batch id: lease end at erasure})."""
    erased = 0
    leases: dict[str, datetime] = {}
    for kind in types:
        # Narrowed in SQL by the text publish() writes ("user_id":42), decided in
        # Python; locked so that no relay seals a row half-way through.
        rows = list(
            OutboxEvent.objects.select_for_update()
            .filter(_text_mentions(kind.id_field, subject_id), event_type=kind.event_type)
            .values_list("id", "event_context", "batch_id")
        )
        for row_id, context, batch_id in rows:
            if not _matches(context, kind.id_field, subject_id):
                continue
            new = erased_context(context, kind.personal)
            if new is None:
                continue
            OutboxEvent.objects.filter(id=row_id).update(event_context=new)
            erased += 1
            if batch_id is not None:
                leases[str(batch_id)] = datetime.now(UTC)
    for batch in OutboxBatch.objects.filter(id__in=list(leases)):
        leases[str(batch.id)] = batch.lease_until
    return erased, leases


def _erase_dead_letters(types: list[SubjectEvents], subject_id: str) -> int:
    erased = 0
    for kind in types:
        letters = (
            DeadLetter.objects.select_for_update()
            .filter(_text_mentions(kind.id_field, subject_id), event_type=kind.event_type)
            .values_list("id", "event_context")
        )
        for letter_id, context in letters:
            # A dead letter's context may not be JSON at all (that is often why it is
            # dead): then it cannot say whose it is, and only a valid one is matched.
            if not _matches(context, kind.id_field, subject_id):
                continue
            new = erased_context(context, kind.personal)
            if new is not None:
                DeadLetter.objects.filter(id=letter_id).update(event_context=new)
                erased += 1
    return erased


def _wait_for_batches(leases: dict[str, datetime], *, timeout: float) -> None:
    """Until each batch is gone from the outbox or its lease (as it was at erasure) ran out."""
    deadline = time.monotonic() + timeout
    while leases and time.monotonic() < deadline:
        live = {
            str(batch_id)
            for batch_id in OutboxEvent.objects.filter(batch_id__in=list(leases))
            .values_list("batch_id", flat=True)
            .distinct()
        }
        now = datetime.now(UTC)
        leases = {b: end for b, end in leases.items() if b in live and end > now}
        if leases:
            time.sleep(0.2)


def _chunks(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _erase_clickhouse(types: list[SubjectEvents], subject_id: str) -> list[tuple[uuid.UUID, bytes]]:
    """Rewrite the subject's rows in ClickHouse; returns each rewritten row's event id
    and new digest (as event_log.chain computes it), read back after the mutation."""
    table = event_log_settings().CLICKHOUSE_TABLE
    raw_ids = [clickhouse.quote(subject_id), clickhouse.quote(json.dumps(subject_id))]
    erased: list[tuple[uuid.UUID, bytes]] = []
    with clickhouse.client() as ch:
        for kind in types:
            rows = clickhouse.query_rows(
                ch,
                f"SELECT toString(event_id), event_context FROM {table} "  # noqa: S608 — quoted
                f"WHERE event_type = {clickhouse.quote(kind.event_type)} "
                f"AND JSONExtractRaw(event_context, {clickhouse.quote(kind.id_field)}) "
                f"IN ({', '.join(raw_ids)})",
            )
            changes = [
                (event_id, new)
                for event_id, context in rows
                if _matches(context, kind.id_field, subject_id)
                and (new := erased_context(context, kind.personal)) is not None
            ]
            for chunk in _chunks(changes, CLICKHOUSE_CHUNK):
                ids = ", ".join(clickhouse.quote(event_id) for event_id, _ in chunk)
                contexts = ", ".join(clickhouse.quote(new) for _, new in chunk)
                try:
                    ch.command(
                        f"ALTER TABLE {table} UPDATE event_context = "
                        f"transform(toString(event_id), [{ids}], [{contexts}], event_context) "
                        f"WHERE event_type = {clickhouse.quote(kind.event_type)} "
                        f"AND toString(event_id) IN ({ids})",
                        settings={"mutations_sync": 2},
                    )
                except Exception as exc:
                    raise clickhouse.ClickHouseError.from_exception(exc) from exc
                erased += [
                    (event_id, bytes(digest))
                    for event_id, digest in clickhouse.query_rows(
                        ch,
                        f"SELECT event_id, {sql.row_digest_sql()} FROM {table} "  # noqa: S608
                        f"WHERE event_type = {clickhouse.quote(kind.event_type)} "
                        f"AND toString(event_id) IN ({ids})",
                    )
                ]
    return erased


def event_log_erase(*, subject: str, wait_for_in_flight: float | None = None) -> ErasureReport:
    """Erase ``subject``'s personal fields from the outbox, the dead letters and
    ClickHouse, then publish :class:`SubjectErased`.

    ``wait_for_in_flight`` bounds the wait for sealed batches holding the subject's
    rows (default: the lease plus the insert timeout). Raises :class:`ErasureError`
    for a bad subject before anything is written, and
    :class:`~event_log.clickhouse.ClickHouseError` if ClickHouse fails (PostgreSQL's
    part is then done; running it again finishes the job).
    """
    kind, subject_id, types = parse_subject(subject)
    report = ErasureReport(
        subject=f"{kind}:{subject_id}", event_types=[t.event_type for t in types]
    )
    with transaction.atomic():
        report.outbox_events, leases = _erase_outbox(types, subject_id)
        report.in_flight_batches = len(leases)
        report.dead_letters = _erase_dead_letters(types, subject_id)
    if wait_for_in_flight is None:
        config = event_log_settings()
        wait_for_in_flight = config.LEASE_SECONDS + config.INSERT_TIMEOUT
    _wait_for_batches(leases, timeout=wait_for_in_flight)
    rewritten = _erase_clickhouse(types, subject_id)
    report.clickhouse_events = len({event_id for event_id, _ in rewritten})
    with transaction.atomic():
        if rewritten:
            # The rows' new digests, as an entry of the batch chain: the verification
            # then expects them (the ClickHouse copy gets it at the next verification).
            with connection.cursor() as cur:
                chain.append(
                    cur,
                    chain.PendingEntry(
                        kind=chain.ERASURE,
                        batch_id=None,
                        rows=len(dict(rewritten)),
                        row_digests=chain.pack(dict(rewritten).items()),
                    ),
                )
        publish(
            SubjectErased(
                subject_kind=kind,
                subject_id=subject_id,
                event_types=report.event_types,
                outbox_events=report.outbox_events,
                dead_letters=report.dead_letters,
                clickhouse_events=report.clickhouse_events,
            )
        )
    logger.info(
        "subject_erased",
        subject_kind=kind,
        subject_id=subject_id,
        outbox_events=report.outbox_events,
        dead_letters=report.dead_letters,
        clickhouse_events=report.clickhouse_events,
    )
    return report
