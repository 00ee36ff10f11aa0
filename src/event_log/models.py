"""PostgreSQL tables of the event log: the outbox, sealed batches and dead letters.

The relay never builds these models row by row: its statements are in
``event_log.sql``. The models exist for migrations, the admin and status.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models

from event_log.envelope import (
    ACTOR_ID_MAX_LENGTH,
    ACTOR_TYPE_MAX_LENGTH,
    REQUEST_ID_MAX_LENGTH,
    TRACEPARENT_MAX_LENGTH,
)
from event_log.events import (
    ENVIRONMENT_MAX_LENGTH,
    EVENT_TYPE_MAX_LENGTH,
    SUBJECT_ID_MAX_LENGTH,
    SUBJECT_TYPE_MAX_LENGTH,
)


class OutboxEvent(models.Model):
    """An event committed with its business transaction and not yet in ClickHouse."""

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=EVENT_TYPE_MAX_LENGTH)
    event_date_time = models.DateTimeField()
    environment = models.CharField(max_length=ENVIRONMENT_MAX_LENGTH)
    # The pydantic JSON text, stored verbatim and shipped verbatim: no re-encoding.
    event_context = models.TextField()
    metadata_version = models.PositiveBigIntegerField(default=1)
    # The envelope (event_log.envelope): who, about what, from which request and trace;
    # '' when unknown or not applicable (docs/adr/0014-audit-envelope.md). db_default:
    # a row written without it (an older release during a deploy, a backfill) gets ''.
    actor_type = models.CharField(max_length=ACTOR_TYPE_MAX_LENGTH, blank=True, db_default="")
    actor_id = models.CharField(max_length=ACTOR_ID_MAX_LENGTH, blank=True, db_default="")
    subject_type = models.CharField(max_length=SUBJECT_TYPE_MAX_LENGTH, blank=True, db_default="")
    subject_id = models.CharField(max_length=SUBJECT_ID_MAX_LENGTH, blank=True, db_default="")
    request_id = models.CharField(max_length=REQUEST_ID_MAX_LENGTH, blank=True, db_default="")
    traceparent = models.CharField(max_length=TRACEPARENT_MAX_LENGTH, blank=True, db_default="")
    # Deliberately in no index (not even a predicate): sealing a row is then a HOT
    # update, with no index write. Rows of a batch are found by id range, on the
    # primary key (see event_log.sql and the fillfactor in migration 0001).
    batch = models.ForeignKey(
        "OutboxBatch",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        db_table = "event_log_outbox"

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class OutboxBatch(models.Model):
    """A sealed batch: rows a relay owns until ``lease_until``, sent under one token."""

    id = models.UUIDField(primary_key=True)
    # The batch's rows lie in [first_id, last_id] (with others that are not its own).
    first_id = models.BigIntegerField()
    last_id = models.BigIntegerField()
    lease_until = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=1)
    sealed_at = models.DateTimeField()
    last_error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "event_log_batch"
        verbose_name_plural = "outbox batches"

    def __str__(self) -> str:
        return str(self.id)


class DeadLetter(models.Model):
    """An event ClickHouse rejected for its data, kept until replayed or purged."""

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=EVENT_TYPE_MAX_LENGTH)
    event_date_time = models.DateTimeField()
    environment = models.CharField(max_length=ENVIRONMENT_MAX_LENGTH)
    event_context = models.TextField()
    metadata_version = models.PositiveBigIntegerField(default=1)
    actor_type = models.CharField(max_length=ACTOR_TYPE_MAX_LENGTH, blank=True, db_default="")
    actor_id = models.CharField(max_length=ACTOR_ID_MAX_LENGTH, blank=True, db_default="")
    subject_type = models.CharField(max_length=SUBJECT_TYPE_MAX_LENGTH, blank=True, db_default="")
    subject_id = models.CharField(max_length=SUBJECT_ID_MAX_LENGTH, blank=True, db_default="")
    request_id = models.CharField(max_length=REQUEST_ID_MAX_LENGTH, blank=True, db_default="")
    traceparent = models.CharField(max_length=TRACEPARENT_MAX_LENGTH, blank=True, db_default="")
    error = models.TextField()
    error_code = models.IntegerField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=1)
    batch_id = models.UUIDField()
    dead_lettered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "event_log_dead_letter"
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class RelayStats(models.Model):
    """Running totals of every relay, anywhere: one row, updated with each batch's delete.

    Kept in PostgreSQL so that /metrics and the status command report the same
    numbers whichever process or machine the relays run on.
    """

    # Several rows ("slots"), summed when read: concurrent relays add to different
    # rows instead of queueing on one.
    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    batches_delivered = models.PositiveBigIntegerField(default=0)
    events_delivered = models.PositiveBigIntegerField(default=0)
    events_dead_lettered = models.PositiveBigIntegerField(default=0)
    last_delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "event_log_relay_stats"
        verbose_name_plural = "relay stats"

    def __str__(self) -> str:
        return f"{self.events_delivered} events delivered"


class Delivery(models.Model):
    """The event ids one batch delivered, kept for ``EVENT_LOG_DELIVERY_RETENTION``.

    Written in the transaction that deletes the batch's rows (event_log.sql's
    RECORD_DELIVERY), so a record exists if and only if ClickHouse acknowledged
    those rows and the outbox let them go. ``event_log_verify`` looks each id up.
    """

    batch_id = models.UUIDField(primary_key=True)
    delivered_at = models.DateTimeField(db_index=True)
    event_ids = ArrayField(models.UUIDField())
    rows = models.PositiveIntegerField()
    # The events' own times: where to look in ClickHouse (its sorting key).
    first_event_at = models.DateTimeField()
    last_event_at = models.DateTimeField()

    class Meta:
        db_table = "event_log_delivery"
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.batch_id} ({self.rows} events)"


class Verification(models.Model):
    """One run of ``event_log_verify``: what it checked and what it found."""

    id = models.BigAutoField(primary_key=True)
    verified_at = models.DateTimeField(db_index=True)
    since = models.DateTimeField()
    until = models.DateTimeField()
    batches = models.PositiveIntegerField()
    events = models.PositiveBigIntegerField()
    duplicated = models.PositiveBigIntegerField()
    missing = models.PositiveBigIntegerField()
    # Findings of the batch chain (event_log.chain): rows whose digest changed, rows no
    # entry accounts for, and breaks in the chain itself.
    altered = models.PositiveBigIntegerField(default=0)
    extra = models.PositiveBigIntegerField(default=0)
    chain_breaks = models.PositiveBigIntegerField(default=0)
    # The first ids of each finding (the command's output has them all).
    findings = models.JSONField(default=dict)

    class Meta:
        db_table = "event_log_verification"

    def __str__(self) -> str:
        return f"{self.verified_at:%Y-%m-%d %H:%M}: {self.failures} findings"

    @property
    def failures(self) -> int:
        return self.duplicated + self.missing + self.altered + self.extra + self.chain_breaks


class ChainEntry(models.Model):
    """One entry of the batch chain (event_log.chain): what one finish, dead-lettering,
    replay or erasure did to the log, chained to the entry before it. Append-only.

    ``row_digests`` holds, sorted by event id, each row's 16-byte event id followed by
    the 32-byte SHA-256 of its canonical text; ``digest`` is SHA-256 of the previous
    entry's digest, this position and ``entry_digest``.
    """

    position = models.BigIntegerField(primary_key=True)
    batch_id = models.UUIDField(null=True, blank=True, db_index=True)
    kind = models.CharField(max_length=16)
    recorded_at = models.DateTimeField(db_index=True)
    rows = models.PositiveIntegerField()
    first_event_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    row_digests = models.BinaryField()
    entry_digest = models.BinaryField()
    prev_digest = models.BinaryField()
    digest = models.BinaryField()

    class Meta:
        db_table = "event_log_chain"
        verbose_name_plural = "chain entries"
        ordering = ("position",)

    def __str__(self) -> str:
        return f"{self.position}: {self.kind} {self.batch_id or ''} ({self.rows} rows)"


class ChainHead(models.Model):
    """The chain's last position and digest: one row (id 1), locked by each append, so
    entries get one total order whichever relay appends them."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    position = models.BigIntegerField(default=0)
    prev_digest = models.BinaryField()
    digest = models.BinaryField()
    # When the chain began: rows in ClickHouse older than this may predate it.
    started_at = models.DateTimeField()

    class Meta:
        db_table = "event_log_chain_head"

    def __str__(self) -> str:
        return f"chain head at {self.position}"


class RelayControl(models.Model):
    """The operators' switch for every relay, anywhere: one row (id 1).

    While ``paused`` is set, each relay run returns before it claims anything (one
    primary-key read per claim), so events wait safely in the outbox.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    paused = models.BooleanField(default=False)
    paused_by = models.CharField(max_length=150, blank=True, default="")
    paused_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")

    class Meta:
        db_table = "event_log_relay_control"
        verbose_name = "relay control"
        verbose_name_plural = "relay control"

    def __str__(self) -> str:
        return "relays paused" if self.paused else "relays running"


class EventLogEntry(models.Model):
    """No table: the admin's "Event log" page searches ClickHouse (event_log.search).

    The model exists for the page's place in the admin and for its permission,
    ``event_log.view_event_log``: staff without it get 403. Nothing is ever read from
    or written to PostgreSQL through it.
    """

    event_id = models.UUIDField(primary_key=True)

    class Meta:
        managed = False
        db_table = "event_log_clickhouse"
        default_permissions = ()
        permissions = [("view_event_log", "Can search the event log (ClickHouse)")]
        verbose_name = "event log"
        verbose_name_plural = "event log"

    def __str__(self) -> str:
        return str(self.event_id)
