-- An acknowledged INSERT must be on disk before the relay deletes its outbox rows:
-- by default a MergeTree answers before its new part is fsynced, so a power loss
-- right after the answer loses rows no one will send again (docs/architecture.md).
ALTER TABLE {table} MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1
