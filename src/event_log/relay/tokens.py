"""Deduplication tokens: the same rows always go under the same token.

A token is derived from the batch and the rows it carries, never from the
attempt, so an INSERT that lands late (ClickHouse finishes a request whose body it
has read even when the client gave up) is dropped as a duplicate of the one that
landed first. The whole batch keeps its historical token, the batch id.

``generation`` moves past a token ClickHouse has been seen to keep without its
rows (a ClickHouse process that died mid-INSERT): it is raised only after an
acknowledged INSERT under the previous generation left the rows absent, so that
generation's token is known to be in ClickHouse's deduplication log, and a late
copy of it is still dropped.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection

from event_log.relay.batch import Batch


def whole_batch_token(batch: Batch, generation: int = 0) -> str:
    """The token of an INSERT of every row of ``batch``: its id."""
    return f"{batch.id}:g{generation}" if generation else str(batch.id)


def token_for(batch: Batch, event_ids: Collection[uuid.UUID], *, generation: int = 0) -> str:
    """The token of an INSERT of ``event_ids`` of ``batch``."""
    if len(event_ids) == batch.rows:
        return whole_batch_token(batch, generation)
    digest = hashlib.blake2b(digest_size=16)
    for event_id in sorted(event_ids):
        digest.update(event_id.bytes)
    token = f"{batch.id}:{digest.hexdigest()}"
    return f"{token}:g{generation}" if generation else token
