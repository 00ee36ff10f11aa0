"""Erasure (GDPR Art. 17): a subject's personal fields, everywhere the event log keeps them.

``event_log_erase(subject="user:42")`` overwrites, with :data:`ERASED`, every field
marked :class:`~event_log.events.Personal` in the events whose class declares that
subject (``subject = ("user", "user_id")``), in the order that leaves no copy behind:

1. **the outbox** (one transaction; the sealed batches holding the subject's rows
   locked first, as a relay locks them, then the rows): events not yet delivered are
   delivered without the data. Those batches are *fenced*: taken over as a new
   attempt (``sql.FENCE_BATCHES``, ADR 0009) and released at once. A relay that
   copied the old text before, even one paused past its lease, then finds its lease
   renewal refused right before its INSERT and sends nothing; the next relay re-reads
   the rewritten rows and, as for every re-sent batch, first looks up which of them
   ClickHouse already holds;
2. **the dead letters**, in the same transaction (a replay sends the erased text);
3. **ClickHouse**: one ``ALTER TABLE … UPDATE`` mutation rewriting ``event_context``
   of the subject's rows, waited for (``mutations_sync = 2``). See
   docs/adr/0012-erasure-by-mutation.md;
4. **a follow-up pass** when batches were fenced: a relay that renewed its lease just
   before the fence may have its INSERT (old text) land after step 3. Such an INSERT
   ends within ``EVENT_LOG_INSERT_TIMEOUT`` of being sent and is sent within a lease
   of the renewal, so :func:`erase_subject_in_clickhouse` runs step 3 again that much
   later (a Celery task with a countdown; idempotent, logged).

The rows step 3 rewrote, with their new digests, are then appended to the batch
chain as an ``erasure`` entry (event_log.chain), so ``event_log_verify`` expects the
erased text (the follow-up pass appends one for the rows it rewrites), and the
erasure is published as :class:`~event_log.events.SubjectErased` (counts
and subject id only), in the same transaction. Running it again is harmless: rows
already erased are not rewritten.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import structlog
from clickhouse_connect.driver.client import Client
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
    # Sealed batches holding the subject's rows, fenced and released (step 1).
    in_flight_batches: int = 0
    dead_letters: int = 0
    clickhouse_events: int = 0
    # Seconds until the follow-up pass in ClickHouse (step 4); None when no batch was
    # fenced, or when it could not be queued (then: run the erasure again that late).
    follow_up_in_s: float | None = None


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


def _erase_outbox(types: list[SubjectEvents], subject_id: str) -> tuple[int, int]:
    """Rewrite the subject's outbox rows and fence the sealed batches holding them;
    returns (rows rewritten, batches fenced). Runs inside the caller's transaction."""
    mentions = Q()
    for kind in types:
        mentions |= _text_mentions(kind.id_field, subject_id) & Q(event_type=kind.event_type)
    # Batches first, then rows: a relay finishing a batch locks them in that order,
    # and the other order could deadlock with it.
    locked = _lock_batches(
        OutboxEvent.objects.filter(mentions, batch_id__isnull=False)
        .values_list("batch_id", flat=True)
        .distinct()
    )
    erased = 0
    touched: set[str] = set()
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
                touched.add(str(batch_id))
    # A row sealed between the first look and its lock: its batch is fenced too.
    _lock_batches(touched - locked)
    if not touched:
        return erased, 0
    with connection.cursor() as cur:
        cur.execute(sql.FENCE_BATCHES, {"batch_ids": sorted(touched)})
        return erased, len(cur.fetchall())


def _lock_batches(batch_ids: Iterable[Any]) -> set[str]:
    """Lock these sealed batches (in id order); returns the ids of those that exist."""
    return {
        str(batch_id)
        for batch_id in OutboxBatch.objects.select_for_update()
        .filter(id__in=list(batch_ids))
        .order_by("id")
        .values_list("id", flat=True)
    }


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


def _chunks(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _erase_clickhouse(
    types: list[SubjectEvents], subject_id: str, client: Client | None = None
) -> dict[uuid.UUID, bytes]:
    """Rewrite the subject's rows in ClickHouse (with ``client``, or a client of its
    own); returns each rewritten row's new digest (as event_log.chain computes it) by
    event id, read back after the mutation."""
    table = event_log_settings().CLICKHOUSE_TABLE
    raw_ids = [clickhouse.quote(subject_id), clickhouse.quote(json.dumps(subject_id))]
    erased: dict[uuid.UUID, bytes] = {}
    with nullcontext(client) if client is not None else clickhouse.client() as ch:
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
                erased.update(
                    (event_id, bytes(digest))
                    for event_id, digest in clickhouse.query_rows(
                        ch,
                        f"SELECT event_id, {sql.row_digest_sql()} FROM {table} "  # noqa: S608
                        f"WHERE event_type = {clickhouse.quote(kind.event_type)} "
                        f"AND toString(event_id) IN ({ids})",
                    )
                )
    return erased


def _chain_erasure(rewritten: dict[uuid.UUID, bytes]) -> None:
    """The rewritten rows' new digests, as an ``erasure`` entry of the batch chain
    (in the caller's transaction): the verification then expects them (the ClickHouse
    copy gets it at the next verification). Nothing when no row was rewritten."""
    if not rewritten:
        return
    with connection.cursor() as cur:
        chain.append(cur, chain.pending_pairs(chain.ERASURE, rewritten.items()))


def event_log_erase(*, subject: str) -> ErasureReport:
    """Erase ``subject``'s personal fields from the outbox, the dead letters and
    ClickHouse, queue the follow-up pass if batches were in flight, then publish
    :class:`SubjectErased`.

    Raises :class:`ErasureError` for a bad subject before anything is written, and
    :class:`~event_log.clickhouse.ClickHouseError` if ClickHouse fails (PostgreSQL's
    part is then done; running it again finishes the job).
    """
    kind, subject_id, types = parse_subject(subject)
    report = ErasureReport(
        subject=f"{kind}:{subject_id}", event_types=[t.event_type for t in types]
    )
    with transaction.atomic():
        report.outbox_events, report.in_flight_batches = _erase_outbox(types, subject_id)
        report.dead_letters = _erase_dead_letters(types, subject_id)
    rewritten = _erase_clickhouse(types, subject_id)
    report.clickhouse_events = len(rewritten)
    if report.in_flight_batches:
        config = event_log_settings()
        delay = config.INSERT_TIMEOUT + config.LEASE_SECONDS
        if _queue_follow_up(report.subject, countdown=delay):
            report.follow_up_in_s = delay
    with transaction.atomic():
        _chain_erasure(rewritten)
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
        in_flight_batches=report.in_flight_batches,
        dead_letters=report.dead_letters,
        clickhouse_events=report.clickhouse_events,
        follow_up_in_s=report.follow_up_in_s,
    )
    return report


def _queue_follow_up(subject: str, *, countdown: float) -> bool:
    """Queue :func:`erase_subject_in_clickhouse` in ``countdown`` seconds; False (and a
    warning) when the broker refused."""
    # Imported here: Celery only when an erasure needs it (tasks imports this module).
    from event_log.tasks import erase_subject_in_clickhouse as task  # noqa: PLC0415

    try:
        task.apply_async(kwargs={"subject": subject}, countdown=countdown, retry=False)
    except Exception as exc:
        logger.warning(
            "subject_erasure_follow_up_not_queued",
            subject=subject,
            run_again_in_s=countdown,
            error=str(exc),
        )
        return False
    return True


def erase_subject_in_clickhouse(*, subject: str, client: Client | None = None) -> int:
    """Step 3 alone, the erasure's follow-up pass: rewrite whatever of ``subject``'s
    personal fields ClickHouse still holds (an INSERT that was in flight when the
    erasure ran). Idempotent; returns how many rows it rewrote (0 when nothing
    landed late). Raises :class:`ErasureError` for a bad subject."""
    kind, subject_id, types = parse_subject(subject)
    rewritten = _erase_clickhouse(types, subject_id, client)
    with transaction.atomic():
        _chain_erasure(rewritten)
    erased = len(rewritten)
    log = logger.warning if erased else logger.info
    log(
        "subject_erasure_followed_up",
        subject_kind=kind,
        subject_id=subject_id,
        clickhouse_events=erased,
    )
    return erased
