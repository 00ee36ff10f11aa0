"""Every statement of the relay, in one place: these statements *are* the protocol.

Rows travel from PostgreSQL to ClickHouse as PostgreSQL ``COPY`` text, which
ClickHouse reads as ``TabSeparated`` (same escaping of tab, newline and
backslash, ``\\N`` for NULL). The relay never builds a Python object per row.
"""

# Columns of the ClickHouse table, in the order the COPY below produces them.
CLICKHOUSE_COLUMNS = (
    "event_id",
    "event_type",
    "event_date_time",
    "environment",
    "event_context",
    "metadata_version",
)

# publish(): one multi-row INSERT (measured cheaper than unnesting arrays, above all
# for the common single event).
INSERT_EVENTS = """
INSERT INTO event_log_outbox
    (event_id, event_type, event_date_time, environment, event_context, metadata_version)
VALUES {rows}
"""
EVENT_ROW = "(%s, %s, %s, %s, %s, %s)"
# PostgreSQL takes at most 65,535 parameters in one statement: 6 per event.
MAX_EVENTS_PER_INSERT = 10_000


def insert_events_statement(count: int) -> str:
    return INSERT_EVENTS.format(rows=", ".join([EVENT_ROW] * count))


# Seal: stamp up to N unsealed rows, oldest first, with a new batch id, and record
# the batch with its lease and id range, in one statement. SKIP LOCKED lets any
# number of relays seal side by side without waiting. batch_id is in no index, so
# each row's UPDATE is a HOT update (no index writes).
SEAL_BATCH = """
WITH picked AS (
    SELECT id FROM event_log_outbox
    WHERE batch_id IS NULL
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
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

# Take over a sealed batch whose lease ran out (its relay died, or backs off).
TAKE_EXPIRED_BATCH = """
UPDATE event_log_batch
SET lease_until = now() + make_interval(secs => %(lease)s), attempts = attempts + 1
WHERE id = (
    SELECT id FROM event_log_batch
    WHERE lease_until < now()
    ORDER BY lease_until
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, attempts, first_id, last_id
"""

# A batch's rows, found on the primary key by id range. Always in id order, so
# every attempt sends the same block.
COPY_BATCH = """
COPY (
    SELECT event_id, event_type, event_date_time AT TIME ZONE 'UTC', environment,
           event_context, metadata_version
    FROM event_log_outbox
    WHERE id BETWEEN {first_id} AND {last_id} AND batch_id = {batch_id} {only}
    ORDER BY id
) TO STDOUT
"""
# COPY_BATCH's {only}: nothing, or ONLY_EVENTS for part of a batch.
ONLY_EVENTS = "AND event_id = ANY({event_ids}::uuid[])"

# Checking a re-sent batch (Relay._complete_resent): what it holds, and what
# ClickHouse has of it, looked up through the table's sorting key.
BATCH_EVENT_RANGE = """
SELECT array_agg(DISTINCT event_type), min(event_date_time), max(event_date_time)
FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
"""

BATCH_EVENT_IDS = """
SELECT event_id FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
"""

STORED_EVENT_IDS = """
SELECT event_id FROM {table}
WHERE event_type IN %(types)s
  AND event_date_time BETWEEN %(first_at)s AND %(last_at)s
  AND event_id IN %(ids)s
"""

BATCH_ROW_IDS = """
SELECT id FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
ORDER BY id
"""

# After ClickHouse acknowledged the insert, one statement: delete the rows, add to
# the running totals (only rows this call deleted: a relay that outlived its
# lease and comes second counts nothing) and delete the batch.
FINISH_BATCH = """
WITH deleted AS (
    DELETE FROM event_log_outbox
    WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
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
DELETE FROM event_log_batch WHERE id = %(batch_id)s
RETURNING (SELECT count(*) FROM deleted)
"""

FINISH_WITHOUT_FSYNC = "SET LOCAL synchronous_commit = off"

# A transient failure: keep the batch sealed; nobody retries before the back-off ends.
POSTPONE_BATCH = """
UPDATE event_log_batch
SET lease_until = now() + make_interval(secs => %(delay)s), last_error = %(error)s
WHERE id = %(batch_id)s
"""

# Poison rows leave the outbox for the dead-letter table, in one statement.
DEAD_LETTER_ROWS = """
WITH moved AS (
    DELETE FROM event_log_outbox WHERE id = ANY(%(ids)s)
    RETURNING event_id, event_type, event_date_time, environment, event_context,
              metadata_version
)
INSERT INTO event_log_dead_letter
    (event_id, event_type, event_date_time, environment, event_context, metadata_version,
     error, error_code, attempts, batch_id, dead_lettered_at)
SELECT event_id, event_type, event_date_time, environment, event_context, metadata_version,
       %(error)s, %(error_code)s, %(attempts)s, %(batch_id)s, now()
FROM moved
"""

# Replay: dead letters go back to the outbox unchanged (same event_id and time).
REPLAY_DEAD_LETTERS = """
WITH moved AS (
    DELETE FROM event_log_dead_letter WHERE id = ANY(%(ids)s)
    RETURNING event_id, event_type, event_date_time, environment, event_context,
              metadata_version
)
INSERT INTO event_log_outbox
    (event_id, event_type, event_date_time, environment, event_context, metadata_version)
SELECT * FROM moved
"""

STATUS = """
SELECT
    (SELECT count(*) FROM event_log_outbox) AS outbox_depth,
    (SELECT min(event_date_time) FROM event_log_outbox) AS oldest_event_at,
    (SELECT count(*) FROM event_log_batch) AS batches_in_flight,
    (SELECT count(*) FROM event_log_dead_letter) AS dead_letters,
    stats.batches_delivered, stats.events_delivered, stats.events_dead_lettered,
    stats.last_delivered_at
FROM (
    SELECT sum(batches_delivered)::bigint AS batches_delivered,
           sum(events_delivered)::bigint AS events_delivered,
           sum(events_dead_lettered)::bigint AS events_dead_lettered,
           max(last_delivered_at) AS last_delivered_at
    FROM event_log_relay_stats
) AS stats
"""

# finish(), in the transaction that deletes the batch, after its dead letters left:
# the event ids about to be deleted, kept for event_log_verify (event_log.verify).
# A relay that outlived its lease and comes second finds no rows and records nothing.
RECORD_DELIVERY = """
INSERT INTO event_log_delivery
    (batch_id, delivered_at, event_ids, rows, first_event_at, last_event_at)
SELECT %(batch_id)s, now(), array_agg(event_id), count(*), min(event_date_time),
       max(event_date_time)
FROM event_log_outbox
WHERE id BETWEEN %(first_id)s AND %(last_id)s AND batch_id = %(batch_id)s
HAVING count(*) > 0
ON CONFLICT (batch_id) DO NOTHING
"""
