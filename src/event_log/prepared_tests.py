"""The relay's statements are prepared on the server once per connection, and only
where the database's options allow it (event_log.relay.prepared)."""

import re
from collections import defaultdict
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from conftest import assert_exactly_once, fast_config, publish_pings
from event_log import sql
from event_log.control import RelaysPausedError, relays_pause, relays_resume
from event_log.models import OutboxEvent
from event_log.relay import Relay
from event_log.relay.claim import claim
from event_log.relay.fence import renew_lease
from event_log.relay.finish import finish
from event_log.relay.loop import DATABASE_ERRORS
from users.models import User

pytestmark = pytest.mark.django_db(transaction=True)

RELAY_STATEMENTS = {
    "claim": sql.TAKE_EXPIRED_BATCH,
    "seal": sql.SEAL_BATCH,
    "lease renewal": sql.RENEW_LEASE,
    "finish": sql.FINISH_BATCH,
}


@pytest.fixture
def relay_session() -> Iterator[None]:
    """This thread's connection is the relay's; closed after the test, with its
    prepared statements."""
    connection.close()
    yield
    connection.close()


def _shape(text: str) -> str:
    """A statement's text with its parameters as ``$`` (psycopg numbers them)."""
    return " ".join(re.sub(r"%\(\w+\)s|\$\d+", "$", text).replace("%%", "%").split())


def prepared_runs() -> dict[str, list[int]]:
    """For each relay step, how often each of its prepared statements ran in this
    session (one statement per set of parameter types); other statements by text."""
    names = {_shape(text): step for step, text in RELAY_STATEMENTS.items()}
    runs: dict[str, list[int]] = defaultdict(list)
    with connection.cursor() as cur:
        cur.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        for statement, count in cur.fetchall():
            runs[names.get(_shape(statement), statement)].append(count)
    return dict(runs)


def drain_step_by_step(batch_size: int) -> int:
    """Claim, renew and finish batches on this thread's connection until none is left."""
    config = fast_config(BATCH_SIZE=batch_size)
    batches = 0
    while (batch := claim(config)) is not None:
        renew_lease(batch, lease=config.LEASE_SECONDS)
        finish(batch)
        batches += 1
    return batches


def test_each_relay_statement_is_prepared_once_and_reused_for_every_batch(relay_session):
    publish_pings(30)

    batches = drain_step_by_step(10)

    assert batches == 3
    assert not OutboxEvent.objects.exists()
    runs = prepared_runs()
    assert set(runs) == set(RELAY_STATEMENTS), runs
    # Once per claim (four: the last finds nothing), seal and finish per batch; an id
    # crossing a wider integer type starts another statement, counted together.
    assert runs["claim"] == [4]
    assert sum(runs["seal"]) == 4
    assert sum(runs["lease renewal"]) == 3
    assert sum(runs["finish"]) == 3
    assert all(len(counts) <= 2 for counts in runs.values()), runs


def test_djangos_own_queries_are_not_prepared(relay_session):
    for _ in range(10):
        User.objects.filter(email="nobody@example.com").exists()

    assert prepared_runs() == {}


def test_statements_prepared_before_a_rollback_are_prepared_again_after_it(relay_session):
    publish_pings(20)
    assert drain_step_by_step(10) == 2  # statements prepared
    published = publish_pings(10)
    relays_pause(by="test")
    # The claim's transaction rolls back; psycopg forgets the prepared statements
    # and deallocates them on the server.
    with pytest.raises(RelaysPausedError):
        claim(fast_config(BATCH_SIZE=10))
    relays_resume(by="test")

    assert drain_step_by_step(10) == 1

    assert not OutboxEvent.objects.filter(event_id__in=published).exists()
    assert sum(prepared_runs()["seal"]) == 2  # prepared anew: the seal and the empty one


def test_a_killed_connection_takes_its_prepared_statements_and_the_next_prepares_them_again(
    relay_session,
):
    publish_pings(20)
    assert drain_step_by_step(10) == 2  # statements prepared on this connection
    published = publish_pings(10)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        [pid] = cur.fetchone()
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])

    with pytest.raises(DATABASE_ERRORS):
        claim(fast_config(BATCH_SIZE=10))
    connection.close()  # what the relay does after a database error

    assert drain_step_by_step(10) == 1
    assert not OutboxEvent.objects.filter(event_id__in=published).exists()
    assert sum(prepared_runs()["seal"]) == 2  # the new connection's own: seal, empty seal


def test_with_prepared_statements_switched_off_nothing_is_prepared_and_each_event_arrives_once(
    ch, relay_session, monkeypatch
):
    # What DATABASE_PREPARED_STATEMENTS=false sets: psycopg's switch, for every new
    # connection (the relay's own thread and its second connection alike).
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", None)
    published = publish_pings(25)

    assert drain_step_by_step(10) == 3
    assert prepared_runs() == {}

    published += publish_pings(40)
    report = Relay(config=fast_config(BATCH_SIZE=10)).run()

    assert report.drained and not report.failures
    # The first 25 were finished without ClickHouse (the steps above): only the
    # relay's run reached it.
    assert_exactly_once(ch, published[25:])
