-- The envelope: who did it, what it is about, which request or task it came from
-- (docs/adr/0014-audit-envelope.md). Adding a column is a metadata change: parts
-- written before it read the default ('') without being rewritten. Empty, not NULL,
-- means "unknown" or "not applicable".
-- The skip indexes make "all events of subject X", "everything request R did" and
-- "what actor A did" read a few granules instead of the table (docs/performance.md).
-- They cover parts written from now on; older parts get them when merged, and
-- `ALTER TABLE … MATERIALIZE INDEX` builds them at once (docs/operations.md).
ALTER TABLE {table}
    ADD COLUMN IF NOT EXISTS actor_type LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS actor_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS subject_type LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS subject_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS request_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS traceparent String DEFAULT '',
    ADD INDEX IF NOT EXISTS subject_lookup subject_id TYPE bloom_filter(0.01) GRANULARITY 1,
    ADD INDEX IF NOT EXISTS request_lookup request_id TYPE bloom_filter(0.01) GRANULARITY 1,
    ADD INDEX IF NOT EXISTS actor_lookup actor_id TYPE bloom_filter(0.01) GRANULARITY 1
