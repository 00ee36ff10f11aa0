"""Every statement of the relay, in one place: these statements *are* the protocol.

Rows travel from PostgreSQL to ClickHouse as PostgreSQL ``COPY`` text, which
ClickHouse reads as ``TabSeparated`` (same escaping of tab, newline and
backslash, ``\\N`` for NULL). The relay never builds a Python object per row.
"""

# The envelope (event_log.envelope), the same columns in the outbox, the dead letters
# and ClickHouse: who did it, what it is about, which request and trace it came from.
# The statements below name them one by one, for all to read.
ENVELOPE_COLUMNS = (
    "actor_type",
    "actor_id",
    "subject_type",
    "subject_id",
    "request_id",
    "traceparent",
)

# Columns of the ClickHouse table, in the order the COPY below produces them.
CLICKHOUSE_COLUMNS = (
    "event_id",
    "event_type",
    "event_date_time",
    "environment",
    "event_context",
    "metadata_version",
    *ENVELOPE_COLUMNS,
)
# What the relay inserts: those columns, then the batch each row travelled in (the key
# of its entry in the batch chain, event_log.chain). Batch digests cover
# CLICKHOUSE_COLUMNS; the batch id is checked against the chain's entry.
RELAY_COLUMNS = (*CLICKHOUSE_COLUMNS, "batch_id")

# publish(): one multi-row INSERT (measured cheaper than unnesting arrays, above all
# for the common single event).
INSERT_EVENTS = """
INSERT INTO event_log_outbox
    (event_id, event_type, event_date_time, environment, event_context, metadata_version,
     actor_type, actor_id, subject_type, subject_id, request_id, traceparent)
VALUES {rows}
"""
EVENT_ROW = "(" + ", ".join(["%s"] * (6 + len(ENVELOPE_COLUMNS))) + ")"
# PostgreSQL takes at most 65,535 parameters in one statement: 12 per event.
MAX_EVENTS_PER_INSERT = 5_000


def insert_events_statement(count: int) -> str:
    return INSERT_EVENTS.format(rows=", ".join([EVENT_ROW] * count))


# The claim must survive a PostgreSQL crash whatever the role or database sets: a lost
# seal after a delivered INSERT would re-seal the rows under a new token. Raised only
# from "off", so a stronger level (remote_apply, …) is kept. Part of TAKE_EXPIRED_BATCH,
# the first statement of every claim.
DURABLE_COMMIT = """
SELECT set_config('synchronous_commit', 'on', true)
WHERE current_setting('synchronous_commit') = 'off'
"""

# A claim's first statement, in one round trip: the operators' pause flag
# (event_log.control), the claim's transaction made durable (DURABLE_COMMIT), and, unless
# relays are paused, the take-over of a sealed batch whose lease ran out (its relay died,
# or backs off). One row: the flag, then the batch taken over or NULLs.
TAKE_EXPIRED_BATCH = f"""
WITH control AS (
    SELECT coalesce(
        (SELECT paused FROM event_log_relay_control WHERE id = %(control_id)s), false
    ) AS paused
), durable AS ({DURABLE_COMMIT}), taken AS (
    UPDATE event_log_batch
    SET lease_until = now() + make_interval(secs => %(lease)s), attempts = attempts + 1
    WHERE id = (
        SELECT id FROM event_log_batch
        WHERE lease_until < now()
        ORDER BY lease_until
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AND NOT (SELECT paused FROM control)
    RETURNING id, attempts, first_id, last_id
)
SELECT control.paused, taken.id, taken.attempts, taken.first_id, taken.last_id
FROM control LEFT JOIN taken ON true
WHERE (SELECT count(*) FROM durable) >= 0
"""  # noqa: S608

# The batch's rows as ClickHouse reads them, in CLICKHOUSE_COLUMNS' order. The time is
# formatted here, in UTC, so that no session setting (DateStyle, TimeZone) changes the
# text ClickHouse reads. A time before year 1 goes as NULL, which ClickHouse refuses
# (INSERT_SETTINGS): to_char drops the era, and 44 BC would be stored as 44 AD.
COPY_COLUMNS = """
    event_id,
    event_type,
    CASE WHEN event_date_time >= '0001-01-01 00:00:00+00'
        THEN to_char(event_date_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') END,
    environment,
    event_context,
    metadata_version,
    actor_type, actor_id, subject_type, subject_id, request_id, traceparent
"""

# A batch's rows (RELAY_COLUMNS: the event's columns, then its batch id, last), found
# on the primary key by id range. Always in id order, so every attempt sends the same
# block. (Built from constants only.)
COPY_BATCH = f"""
COPY (
    SELECT {COPY_COLUMNS},
    batch_id
    FROM event_log_outbox
    WHERE id BETWEEN {{first_id}} AND {{last_id}} AND batch_id = {{batch_id}} {{only}}
    ORDER BY id
) TO STDOUT
"""  # noqa: S608
# COPY_BATCH's {only}: nothing, or ONLY_EVENTS for part of a batch.
ONLY_EVENTS = "AND event_id = ANY({event_ids}::uuid[])"

# Seal: stamp unsealed rows, oldest first, with a new batch id, and record the batch
# with its lease and id range, in one statement. A batch holds at most %(limit)s rows
# and %(max_bytes)s bytes of event context (always at least one row, so an event over
# the byte cap travels alone). SKIP LOCKED lets any number of relays seal side by
# side without waiting. batch_id is in no index, so each row's UPDATE is a HOT
# update (no index writes). octet_length() reads a TOASTed value's size from its
# header, without fetching it. (Copying the rows out in the same statement, from the
# UPDATE's RETURNING, was measured slower than COPY_BATCH after it: the claim took 92
# against 84 ms for 5,000 rows; docs/performance.md.)
SEAL_BATCH = """
WITH candidates AS (
    SELECT id, octet_length(event_context) AS size FROM event_log_outbox
    WHERE batch_id IS NULL
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), total AS (
    SELECT sum(size) AS size FROM candidates
), picked AS (
    -- All of them when they fit (the usual case), without the running sum: its sort
    -- and window functions run only under the cap's one-time filter.
    SELECT id FROM candidates WHERE (SELECT size FROM total) <= %(max_bytes)s
    UNION ALL
    SELECT id FROM (
        SELECT id, sum(size) OVER (ORDER BY id) AS running, row_number() OVER (ORDER BY id) AS n
        FROM candidates
    ) AS sized
    WHERE (SELECT size FROM total) > %(max_bytes)s AND (running <= %(max_bytes)s OR n = 1)
), sealed AS (
    -- = ANY(ARRAY(...)) keeps this an index scan on the primary key; a join with
    -- "picked" was planned as a hash join over the whole table.
    UPDATE event_log_outbox
    SET batch_id = %(batch_id)s
    WHERE id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING id
)
INSERT INTO event_log_batch (id, first_id, last_id, lease_until, attempts, sealed_at, last_error)
SELECT %(batch_id)s, min(id), max(id), now() + make_interval(secs => %(lease)s), 1, now(), ''
FROM sealed
HAVING count(*) > 0
RETURNING first_id, last_id
"""

# What ClickHouse holds of a batch is looked up by the table's whole sorting key
# (relay.verify): these are the keys of the batch's rows, the time as COPY_BATCH sends it.
BATCH_EVENT_KEYS = """
SELECT event_id, event_type,
       CASE WHEN event_date_time >= '0001-01-01 00:00:00+00'
           THEN to_char(event_date_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') END
FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
"""

STORED_EVENT_IDS = """
SELECT event_id FROM {table}
WHERE (event_type, event_date_time, event_id) IN ({keys})
"""

# Fencing: the relay that holds a batch is the one whose attempt number is the
# batch's. Right before each INSERT it renews its lease; a relay that paused past
# its lease finds another attempt number here and sends nothing. The renewal also
# reads the operators' pause flag (event_log.control): a paused relay sends nothing more.
#
# In a statement of its own (autocommit: %(own_transaction)s true) the renewal's commit
# does not wait for the disk: every other relay sees it at once, and a renewal lost in
# a PostgreSQL crash leaves the lease of the seal or of an earlier renewal, less than a
# second shorter, which the crash has ended anyway (the relay's connection is gone, so
# its next step fails). Durable, it would cost a WAL flush per batch. Inside a caller's
# transaction the setting is left alone: it would apply to that whole transaction.
RENEW_LEASE = """
WITH no_flush AS (
    SELECT set_config(
        'synchronous_commit',
        CASE WHEN %(own_transaction)s THEN 'off' ELSE current_setting('synchronous_commit') END,
        true
    )
)
UPDATE event_log_batch
SET lease_until = now() + make_interval(secs => %(lease)s)
FROM no_flush
WHERE id = %(batch_id)s AND attempts = %(attempts)s
RETURNING coalesce(
    (SELECT paused FROM event_log_relay_control WHERE id = %(control_id)s), false
)
"""

# Erasure (event_log.erasure), in the transaction that rewrites a subject's rows:
# take over the sealed batches holding them as a new attempt, so the relay that
# copied the old text finds its renewal refused (RENEW_LEASE) and sends nothing, and
# release them at once, so the next relay re-reads the rewritten rows.
FENCE_BATCHES = """
UPDATE event_log_batch
SET attempts = attempts + 1, lease_until = least(lease_until, now())
WHERE id = ANY(%(batch_ids)s::uuid[])
RETURNING id
"""

# The slow path's finish starts by locking the batch as its holder (take-overs skip
# a locked batch); no row means another relay holds it now.
HOLD_BATCH = """
SELECT 1 FROM event_log_batch
WHERE id = %(batch_id)s AND attempts = %(attempts)s
FOR UPDATE
"""

# A batch's delivery record (event_log.verify): a batch finished in parts adds each part
# to its one record (RECORD_DELIVERY, FINISH_BATCH).
MERGE_DELIVERY = """
ON CONFLICT (batch_id) DO UPDATE SET
    delivered_at = EXCLUDED.delivered_at,
    event_ids = event_log_delivery.event_ids || EXCLUDED.event_ids,
    rows = event_log_delivery.rows + EXCLUDED.rows,
    first_event_at = least(event_log_delivery.first_event_at, EXCLUDED.first_event_at),
    last_event_at = greatest(event_log_delivery.last_event_at, EXCLUDED.last_event_at)
"""

# The batch chain's append (event_log.chain) is two steps, which APPEND_CHAIN_ENTRY and
# FINISH_BATCH share: move the head (its row's lock is then held until the commit), then
# insert the entry. {only_if} is a condition on the statement's other steps ("WHERE
# true" for none: it also keeps ON CONFLICT from reading as a join's ON).
CHAIN_HEAD_MOVE = """
    INSERT INTO event_log_chain_head AS h (id, position, prev_digest, digest, started_at)
    SELECT 1, 1, %(genesis)s, sha256(%(genesis)s || int8send(1) || %(entry_digest)s), now()
    {only_if}
    ON CONFLICT (id) DO UPDATE SET
        position = h.position + 1,
        prev_digest = h.digest,
        digest = sha256(h.digest || int8send(h.position + 1) || %(entry_digest)s)
    RETURNING position, prev_digest, digest
"""
CHAIN_ENTRY_INSERT = """
    INSERT INTO event_log_chain
        (position, batch_id, kind, recorded_at, rows, first_event_at, last_event_at,
         row_digests, entry_digest, prev_digest, digest)
    SELECT position, %(batch_id)s, %(kind)s, clock_timestamp(), %(rows)s,
           %(first_event_at)s::timestamptz, %(last_event_at)s::timestamptz,
           %(row_digests)s, %(entry_digest)s, prev_digest, digest
    FROM head
    RETURNING position,
              to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS recorded,
              prev_digest, digest
"""

# After ClickHouse acknowledged the insert, one statement and so one transaction (in
# autocommit): as the batch's holder (a relay that lost its lease deletes, records,
# counts and chains nothing, and gets no row back), delete the rows, record their event
# ids for event_log_verify (as RECORD_DELIVERY does, from the deleted rows, so they are
# read once), add to the running totals, append the batch's chain entry last (its head
# lock taken once the rows are deleted and recorded) and delete the batch. Its commit
# does not wait for the disk (no_flush): if PostgreSQL loses it in a crash, the batch
# comes back sealed and is re-sent, its rows looked up first. Returns the rows deleted
# and the entry's position, time (text), previous digest and digest (NULLs without one).
FINISH_BATCH = f"""
WITH no_flush AS (
    SELECT set_config('synchronous_commit', 'off', true) AS setting
), held AS (
    SELECT id FROM event_log_batch
    WHERE id = %(batch_id)s AND attempts = %(attempts)s
      AND (SELECT setting FROM no_flush) IS NOT NULL
    FOR UPDATE
), deleted AS (
    DELETE FROM event_log_outbox
    WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
      AND EXISTS (SELECT 1 FROM held)
    RETURNING event_id, event_date_time
), recorded AS (
    INSERT INTO event_log_delivery
        (batch_id, delivered_at, event_ids, rows, first_event_at, last_event_at)
    SELECT %(batch_id)s, now(), array_agg(event_id), count(*), min(event_date_time),
           max(event_date_time)
    FROM deleted
    HAVING count(*) > 0
    {MERGE_DELIVERY}
    RETURNING 1
), counted AS (
    INSERT INTO event_log_relay_stats
        (id, batches_delivered, events_delivered, events_dead_lettered, last_delivered_at)
    SELECT pg_backend_pid() %% 16, 1, count(*), 0, now() FROM deleted
    HAVING count(*) > 0
    ON CONFLICT (id) DO UPDATE SET
        batches_delivered = event_log_relay_stats.batches_delivered + 1,
        events_delivered = event_log_relay_stats.events_delivered + EXCLUDED.events_delivered,
        last_delivered_at = now()
    RETURNING events_delivered
), head AS ({
    CHAIN_HEAD_MOVE.format(
        only_if='''
    WHERE %(with_entry)s AND EXISTS (SELECT 1 FROM held)
      AND (SELECT count(*) FROM recorded) >= 0 AND (SELECT count(*) FROM counted) >= 0'''
    )
}
), chained AS ({CHAIN_ENTRY_INSERT})
DELETE FROM event_log_batch WHERE id = (SELECT id FROM held)
RETURNING (SELECT count(*) FROM deleted), (SELECT position FROM chained),
          (SELECT recorded FROM chained), (SELECT prev_digest FROM chained),
          (SELECT digest FROM chained)
"""  # noqa: S608

# The slow path (a re-sent, checked or isolated batch), under HOLD_BATCH: delete the
# rows ClickHouse is known to hold and add them to the totals. Rows neither
# delivered nor dead-lettered stay in the batch for its next attempt.
FINISH_ROWS = """
WITH deleted AS (
    DELETE FROM event_log_outbox
    WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
      AND event_id = ANY(%(event_ids)s::uuid[])
    RETURNING 1
), counted AS (
    INSERT INTO event_log_relay_stats
        (id, batches_delivered, events_delivered, events_dead_lettered, last_delivered_at)
    SELECT pg_backend_pid() %% 16, 1, count(*), %(dead_lettered)s, now() FROM deleted
    HAVING count(*) > 0 OR %(dead_lettered)s > 0
    ON CONFLICT (id) DO UPDATE SET
        batches_delivered = event_log_relay_stats.batches_delivered + 1,
        events_delivered = event_log_relay_stats.events_delivered + EXCLUDED.events_delivered,
        events_dead_lettered = event_log_relay_stats.events_dead_lettered
            + EXCLUDED.events_dead_lettered,
        last_delivered_at = now()
    RETURNING events_delivered
)
SELECT count(*) FROM deleted
"""

# After FINISH_ROWS: the batch is done when no row is left; otherwise it is postponed
# (POSTPONE_BATCH) and its next attempt looks up what ClickHouse holds and sends the rest.
CLOSE_BATCH = """
DELETE FROM event_log_batch
WHERE id = %(batch_id)s AND NOT EXISTS (
    SELECT 1 FROM event_log_outbox
    WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
)
RETURNING 1
"""

FINISH_WITHOUT_FSYNC = "SET LOCAL synchronous_commit = off"

# A transient failure: keep the batch sealed; nobody retries before the back-off
# ends. Only the batch's holder may postpone it.
POSTPONE_BATCH = """
UPDATE event_log_batch
SET lease_until = now() + make_interval(secs => %(delay)s), last_error = %(error)s
WHERE id = %(batch_id)s AND attempts = %(attempts)s
"""

# Poison rows leave the outbox for the dead-letter table, in one statement, each
# with its own error (arrays in the same order).
DEAD_LETTER_ROWS = """
WITH rejected AS (
    SELECT * FROM unnest(%(event_ids)s::uuid[], %(errors)s::text[], %(codes)s::int[])
        AS r(event_id, error, error_code)
), moved AS (
    DELETE FROM event_log_outbox AS o
    USING rejected AS r
    WHERE o.id BETWEEN %(first_id)s AND %(last_id)s AND o.batch_id = %(batch_id)s
      AND o.event_id = r.event_id
    RETURNING o.event_id, o.event_type, o.event_date_time, o.environment, o.event_context,
              o.metadata_version, o.actor_type, o.actor_id,
              o.subject_type, o.subject_id, o.request_id, o.traceparent,
              r.error, r.error_code
)
INSERT INTO event_log_dead_letter
    (event_id, event_type, event_date_time, environment, event_context, metadata_version,
     actor_type, actor_id, subject_type, subject_id, request_id, traceparent,
     error, error_code, attempts, batch_id, dead_lettered_at)
SELECT event_id, event_type, event_date_time, environment, event_context, metadata_version,
       actor_type, actor_id, subject_type, subject_id, request_id, traceparent,
       error, error_code, %(attempts)s, %(batch_id)s, now()
FROM moved
RETURNING 1
"""

# Replay: dead letters go back to the outbox unchanged (same event_id, time and
# envelope: the replay is not a new action, so it keeps who and what caused the event).
REPLAY_DEAD_LETTERS = """
WITH moved AS (
    DELETE FROM event_log_dead_letter WHERE id = ANY(%(ids)s)
    RETURNING event_id, event_type, event_date_time, environment, event_context,
              metadata_version, actor_type, actor_id, subject_type, subject_id, request_id,
              traceparent
)
INSERT INTO event_log_outbox
    (event_id, event_type, event_date_time, environment, event_context, metadata_version,
     actor_type, actor_id, subject_type, subject_id, request_id, traceparent)
SELECT * FROM moved
"""

# Status (/health, /metrics, event_log_status) in constant time, however long the
# backlog: every read of the outbox and of the dead-letter table goes down the primary
# key and stops early. A count(*) or a min() of an unindexed column would read the
# whole backlog, exactly when it is longest. event_log.status turns these into figures.
# - "head" counts at most %(counted)s rows from the lowest id, and finds that id: one
#   walk from the low end, where a relay's deletes leave dead index entries until
#   vacuum; the oldest event is then fetched by that id, which skips them.
# - The oldest event's time is clamped into what Python's datetime holds: a row dated
#   'infinity' (written by hand) must not turn /health into an error.
STATUS = """
SELECT
    head.counted AS outbox_counted,
    (SELECT max(id) FROM event_log_outbox) - head.first_id + 1 AS outbox_id_span,
    (SELECT least(greatest(event_date_time, '0001-01-01 00:00:00+00'),
                  '9999-12-31 23:59:59.999999+00')
     FROM event_log_outbox WHERE id = head.first_id) AS oldest_event_at,
    (SELECT count(*) FROM event_log_batch) AS batches_in_flight,
    (SELECT count(*) FROM event_log_batch WHERE attempts >= %(alert_after)s) AS batches_stuck,
    dead_head.counted AS dead_letters_counted,
    (SELECT max(id) FROM event_log_dead_letter) - dead_head.first_id + 1
        AS dead_letter_id_span,
    stats.batches_delivered, stats.events_delivered, stats.events_dead_lettered,
    stats.last_delivered_at
FROM (
    SELECT count(*) AS counted, min(id) AS first_id
    FROM (SELECT id FROM event_log_outbox ORDER BY id LIMIT %(counted)s) AS first_rows
) AS head, (
    SELECT count(*) AS counted, min(id) AS first_id
    FROM (SELECT id FROM event_log_dead_letter ORDER BY id LIMIT %(counted)s) AS first_rows
) AS dead_head, (
    SELECT sum(batches_delivered)::bigint AS batches_delivered,
           sum(events_delivered)::bigint AS events_delivered,
           sum(events_dead_lettered)::bigint AS events_dead_lettered,
           max(last_delivered_at) AS last_delivered_at
    FROM event_log_relay_stats
) AS stats
"""

# What a relay left behind (relay_events --once): sealed batches, oldest first, with
# their lease and last error. The batch table holds only batches in flight.
PENDING_BATCHES = """
SELECT id, attempts, first_id, last_id, lease_until, last_error, lease_until > now()
FROM event_log_batch
ORDER BY sealed_at, id
LIMIT %(limit)s
"""

# A batch of one row over EVENT_LOG_BATCH_MAX_BYTES: the size the seal measured.
BATCH_CONTEXT_BYTES = """
SELECT coalesce(max(octet_length(event_context)), 0) FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
"""

# finish_checked(), as the batch's holder, in the transaction that deletes the rows,
# after dead letters left: the event ids about to be deleted (all of the batch's, or
# those of %(event_ids)s), kept for event_log_verify (event_log.verify). The fast path's
# FINISH_BATCH records its rows itself.
RECORD_DELIVERY = f"""
INSERT INTO event_log_delivery
    (batch_id, delivered_at, event_ids, rows, first_event_at, last_event_at)
SELECT %(batch_id)s, now(), array_agg(event_id), count(*), min(event_date_time),
       max(event_date_time)
FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
  AND (%(event_ids)s::uuid[] IS NULL OR event_id = ANY(%(event_ids)s::uuid[]))
HAVING count(*) > 0
{MERGE_DELIVERY}
"""  # noqa: S608

# event_log_search and the admin's "Event log" page (event_log.search): one page of
# the events matching an investigator's filters, newest first. {where} is made of
# column comparisons with quoted literals only (clickhouse.quote), never of the
# input's text; {limit} and {offset} are checked integers. The envelope's skip indexes
# serve the subject, request and actor filters.
SEARCH_EVENTS = """
SELECT event_id, event_date_time, event_type, environment, metadata_version,
       actor_type, actor_id, subject_type, subject_id, request_id, traceparent,
       event_context
FROM {table}
WHERE {where}
ORDER BY event_date_time DESC, event_id DESC
LIMIT {limit} OFFSET {offset}
"""

# -- the batch chain (event_log.chain) -------------------------------------------------

# Append one entry, in the transaction that finishes (or dead-letters, replays, erases)
# what it records. The head row is the chain's one serialisation point: its lock is held
# from here to the commit, so entries get consecutive positions in one total order
# whichever relay appends them. The link is computed here, from the head's digest as it
# is once locked: digest = sha256(previous digest || position (8 bytes) || entry digest).
# A missing head row is the genesis (position 0, all-zero digest). recorded_at is taken
# under the lock (clock_timestamp(), not the transaction's start), so it grows with the
# position; it comes back as text: no session setting (DateStyle) may change it.
APPEND_CHAIN_ENTRY = f"""
WITH head AS ({CHAIN_HEAD_MOVE.format(only_if="WHERE true")})
{CHAIN_ENTRY_INSERT}
"""

CHAIN_ENTRY_COLUMNS = """
position, batch_id, kind, recorded_at, rows, first_event_at, last_event_at, row_digests,
entry_digest, prev_digest, digest
"""
# The entries of a window: every position from the first recorded in it to the last,
# so the walk sees a contiguous stretch whatever the clock did.
CHAIN_ENTRIES_RECORDED = f"""
SELECT {CHAIN_ENTRY_COLUMNS} FROM event_log_chain
WHERE position >= (SELECT min(position) FROM event_log_chain WHERE recorded_at >= %(since)s)
  AND position <= (SELECT max(position) FROM event_log_chain WHERE recorded_at < %(until)s)
ORDER BY position
"""  # noqa: S608 (column names only)
CHAIN_ENTRY_AT = f"""
SELECT {CHAIN_ENTRY_COLUMNS} FROM event_log_chain WHERE position = %(position)s
"""  # noqa: S608 (column names only)
CHAIN_ENTRIES_AFTER = f"""
SELECT {CHAIN_ENTRY_COLUMNS} FROM event_log_chain
WHERE position > %(position)s ORDER BY position LIMIT %(limit)s
"""  # noqa: S608 (column names only)
# Erasures change the digests of rows delivered before them: those from the window's
# first entry on apply to the window's rows.
CHAIN_ERASURES_FROM = f"""
SELECT {CHAIN_ENTRY_COLUMNS} FROM event_log_chain
WHERE kind = 'erasure' AND position >= %(position)s ORDER BY position
"""  # noqa: S608 (column names only)
# Rows ClickHouse holds under batches outside the window: their entries, to tell a row
# delivered earlier from a forged one.
CHAIN_DELIVERIES_OF_BATCHES = f"""
SELECT {CHAIN_ENTRY_COLUMNS} FROM event_log_chain
WHERE kind = 'delivery' AND batch_id = ANY(%(batch_ids)s::uuid[])
"""  # noqa: S608 (column names only)
# The head and the last entry, read in one statement (one snapshot): an append between
# two reads would look like a head that is not the last entry.
CHAIN_HEAD = """
SELECT h.position, h.digest, h.started_at, last.position, last.digest
FROM event_log_chain_head AS h
LEFT JOIN LATERAL (
    SELECT position, digest FROM event_log_chain ORDER BY position DESC LIMIT 1
) AS last ON true
WHERE h.id = 1
"""
# Batches still in flight: their rows may be in ClickHouse before their entry exists.
BATCHES_IN_FLIGHT = "SELECT id FROM event_log_batch WHERE id = ANY(%(batch_ids)s::uuid[])"


def row_digest_sql(columns: tuple[str, ...] = CLICKHOUSE_COLUMNS) -> str:
    """ClickHouse's expression for a row's digest, as event_log.chain computes it from the
    text the relay sends: SHA-256 of the columns' text (``toString``) joined by tabs, with
    backslash, tab and newline escaped and NULL as empty text (32 bytes)."""
    fields = [
        f"ifNull(replaceAll(replaceAll(replaceAll(toString(`{column}`), '\\\\', '\\\\\\\\'), "
        f"'\\t', '\\\\t'), '\\n', '\\\\n'), '')"
        for column in columns
    ]
    return f"SHA256(concat({", '\\t', ".join(fields)}))"


# The rows of event-time spans with their batch and digest, raw (event_log.verify).
CLICKHOUSE_ROW_DIGESTS = """
SELECT event_id, batch_id, event_date_time, {digest} FROM {table} WHERE {where}
"""
# The ClickHouse copy of the ledger (EVENT_LOG_CLICKHOUSE_TABLE + "_batches").
CHAIN_COPY_COLUMNS = (
    "position",
    "batch_id",
    "kind",
    "recorded_at",
    "rows",
    "first_event_at",
    "last_event_at",
    "row_digests",
    "entry_digest",
    "prev_digest",
    "digest",
)
CHAIN_COPY_DIGESTS = """
SELECT position, digest FROM {table} WHERE position BETWEEN {first:d} AND {last:d}
"""
