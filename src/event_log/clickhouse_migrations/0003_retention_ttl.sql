-- Retention: events expire EVENT_LOG_RETENTION_DAYS after they happened. The TTL
-- itself follows the setting and is set (or removed, for 0) by clickhouse_migrate at
-- every run (event_log.retention); this file makes expiry cheap: with monthly
-- partitions, a part is dropped whole once all its rows have expired, never rewritten.
ALTER TABLE {table} MODIFY SETTING ttl_only_drop_parts = 1
