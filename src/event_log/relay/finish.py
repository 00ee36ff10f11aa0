"""Step 3, finish: delete the delivered batch; or give it back for a later attempt."""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError, connection, transaction

from event_log import sql
from event_log.clickhouse import ClickHouseError
from event_log.relay.batch import Batch


def finish(batch: Batch, rejected: list[tuple[int, ClickHouseError]]) -> None:
    """Delete the delivered batch; rejected rows go to the dead-letter table."""
    with transaction.atomic(), connection.cursor() as cur:
        # No need to wait for the disk: if PostgreSQL loses this commit in a crash,
        # the batch comes back sealed and is re-sent under the same token, which
        # ClickHouse drops. (The seal, by contrast, is a normal durable commit.)
        cur.execute(sql.FINISH_WITHOUT_FSYNC)
        if rejected:
            cur.execute(sql.BATCH_ROW_IDS, batch.keys)
            ids = [row[0] for row in cur.fetchall()]
            for position, error in rejected:
                cur.execute(
                    sql.DEAD_LETTER_ROWS,
                    {
                        "ids": [ids[position]],
                        "error": str(error),
                        "error_code": error.code,
                        "attempts": batch.attempts,
                        "batch_id": batch.id,
                    },
                )
        cur.execute(sql.RECORD_DELIVERY, batch.keys)
        cur.execute(sql.FINISH_BATCH, {**batch.keys, "dead_lettered": len(rejected)})


def release(batch: Batch, *, delay: float, error: str) -> None:
    """Let any relay take the batch again after ``delay`` seconds (same rows, same token)."""
    try:
        with connection.cursor() as cur:
            cur.execute(
                sql.POSTPONE_BATCH,
                {"batch_id": batch.id, "delay": delay, "error": error[:2000]},
            )
    except (DatabaseError, InterfaceError):
        connection.close()  # the lease then expires by itself; nothing is lost
