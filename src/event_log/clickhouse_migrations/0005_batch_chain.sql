-- The batch chain (event_log.chain): each row names the batch it was delivered in; rows
-- written before the chain existed (or by anything but the relay) hold the nil UUID.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS batch_id UUID;
-- The ClickHouse copy of the chain's ledger (PostgreSQL's event_log_chain), one row per
-- entry, written by the relay after each finish and completed by event_log_verify.
-- Digests are hexadecimal; row_digests holds the entry's (event id, row digest) pairs.
CREATE TABLE IF NOT EXISTS {batches}
(
    position UInt64,
    batch_id UUID,
    kind LowCardinality(String),
    recorded_at DateTime64(6, 'UTC'),
    rows UInt32,
    first_event_at Nullable(DateTime64(6, 'UTC')),
    last_event_at Nullable(DateTime64(6, 'UTC')),
    row_digests String,
    entry_digest String,
    prev_digest String,
    digest String
)
ENGINE = MergeTree
ORDER BY position
SETTINGS non_replicated_deduplication_window = 10000
