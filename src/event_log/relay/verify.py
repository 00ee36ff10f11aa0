"""What ClickHouse already holds of a batch, looked up by the table's sorting key.

The token alone cannot say. A ClickHouse process that died in the middle of an
INSERT (the embedded engine dies with its relay) can come back remembering the
token without the rows, which a plain re-send would then lose; or holding the
rows without the token, which a plain re-send would then duplicate; or holding
some of the blocks of a multi-block INSERT. Every re-sent batch, and every batch
whose rows went in more than one INSERT, is therefore checked here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

from clickhouse_connect.driver.client import Client
from django.db import connection

from event_log import clickhouse, sql
from event_log.conf import EventLogSettings
from event_log.relay.batch import Batch

# Keys per lookup query: about 100 bytes each, well under ClickHouse's default
# max_query_size (256 KiB) whatever the batch size.
KEYS_PER_QUERY = 1_000

Key = tuple[uuid.UUID, str, str]

# The only time text an INSERT of the batch can have been stored from (COPY_BATCH's
# format). Any other (NULL for an infinite time, a year past 9999) fails the whole
# lookup with TYPE_MISMATCH, so its row, which ClickHouse cannot hold, is not looked up.
_STORABLE_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}")


def stored_event_ids(ch: Client, config: EventLogSettings, batch: Batch) -> set[uuid.UUID]:
    """The batch's event ids that ClickHouse holds (raises ``ClickHouseError``).

    The lookup names each row by the whole sorting key ``(event_type,
    event_date_time, event_id)``, so ClickHouse reads only the granules that can
    hold them, however many months apart a batch's events are (a replayed event).
    """
    with connection.cursor() as cur:
        cur.execute(sql.BATCH_EVENT_KEYS, batch.keys)
        keys = [key for key in cur.fetchall() if key[2] and _STORABLE_TIME.fullmatch(key[2])]
    stored: set[uuid.UUID] = set()
    for chunk in _chunks(keys, KEYS_PER_QUERY):
        literal = ",".join(
            f"({clickhouse.quote(event_type)},{clickhouse.quote(at)},'{event_id}')"
            for event_id, event_type, at in chunk
        )
        statement = sql.STORED_EVENT_IDS.format(table=config.CLICKHOUSE_TABLE, keys=literal)
        stored.update(
            row[0] for row in clickhouse.query_rows(ch, statement, timeout=config.INSERT_TIMEOUT)
        )
    return stored


def _chunks(items: list[Key], size: int) -> Iterator[list[Key]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
