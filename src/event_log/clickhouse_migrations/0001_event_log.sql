-- The event log: one row per published event.
CREATE TABLE IF NOT EXISTS {table}
(
    event_id UUID,
    event_type LowCardinality(String),
    event_date_time DateTime64(6, 'UTC'),
    environment LowCardinality(String),
    event_context String,
    metadata_version UInt64,
    CONSTRAINT event_context_is_json CHECK isValidJSON(event_context)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date_time)
ORDER BY (event_type, event_date_time, event_id)
-- Deduplication by insert_deduplication_token needs a window of recent blocks
-- on a non-replicated table; it must exceed the inserts taken between a batch's
-- first attempt and its last retry (see docs/architecture.md).
SETTINGS non_replicated_deduplication_window = 10000
