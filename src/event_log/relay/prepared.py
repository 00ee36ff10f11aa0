"""The relay's statements, prepared: parsed and planned on the server once per connection.

Every batch runs the same few statements: the claim, the seal, the lease renewal and
the finish. Through Django's cursor, which merges the parameters into the text on the
client, PostgreSQL parses and plans each of them again for every batch. The cursor
here sends the parameters apart and prepares each statement on the connection the
first time it runs (psycopg's ``prepare=True``); later batches bind and execute it.
It is psycopg's own cursor over this thread's Django connection, so Django's
transactions and its reconnection after a failure apply as for any other statement.

Prepared statements live in one server session, which a connection pooler in
transaction mode may not keep: the database's ``prepare_threshold`` option (psycopg's
switch, set from ``DATABASE_PREPARED_STATEMENTS`` in the settings) turns them off,
and the relay then sends its statements through Django's cursor as anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection


class _PreparingCursor(psycopg.Cursor[Any]):
    """A cursor with server-side parameters whose statements are prepared from their
    first run (unless a call says ``prepare=False``)."""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, **kwargs: Any
    ) -> Any:
        return super().execute(query, params, prepare=prepare is not False, **kwargs)


@contextmanager
def cursor() -> Iterator[Any]:
    """A cursor on this thread's connection whose statements are prepared, if allowed."""
    connection.ensure_connection()
    if connection.connection.prepare_threshold is None:
        with connection.cursor() as plain:
            yield plain
        return
    with _PreparingCursor(connection.connection) as prepared:
        yield prepared
