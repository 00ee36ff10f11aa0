"""Model-based fault exploration: hypothesis drives the relay's own steps in any order.

Steps are the relay's plain functions (``claim``, ``write``, ``finish``,
``finish_checked``, ``release``, ``Relay.run``) and the staff's (dead letters
replay), run against the real PostgreSQL and the real ClickHouse engine, with
every ClickHouse outcome injected at the one place rows are sent
(``event_log.clickhouse.insert_tsv``, as relay/isolate.py calls it): not landed,
landed, landed after the client gave up, token kept without rows, rows kept
without token, part of the rows landed. Two relays hold batches side by side,
including stale copies of batches another relay took over after their lease
(a relay paused past its lease).

After every step: ClickHouse holds no event twice and nothing that was not
committed or that it must refuse; every row that left the outbox other than as
a dead letter is in ClickHouse; dead letters are rows ClickHouse refuses; the
delivery totals match. After each sequence, a drain without faults must leave
ClickHouse holding exactly the committed events minus the dead letters, no
batch, and the poison rows as dead letters.

``EVENT_LOG_MODEL_EXAMPLES`` (default 60) sets how many sequences are explored.
Counterexamples the machine found are kept below as plain regression tests.
"""

from __future__ import annotations

import enum
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import Ping
from event_log import clickhouse, publish
from event_log.clickhouse import ClickHouseError
from event_log.conf import EventLogSettings, event_log_settings
from event_log.dead_letters import dead_letters_replay
from event_log.relay import Relay
from event_log.relay.batch import Batch, Delivery
from event_log.relay.claim import claim
from event_log.relay.fence import LeaseLostError
from event_log.relay.finish import finish, finish_checked, release
from event_log.relay.write import write

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("EVENT_LOG_MODEL_EXAMPLES", "60"))
STEPS = int(os.environ.get("EVENT_LOG_MODEL_STEPS", "40"))
MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    # Counterexamples are kept as the regression tests below, not in a local folder.
    database=None,
    print_blob=True,
    # Each step talks to two real databases: slow by hypothesis's measure, on purpose;
    # long sequences may exceed its data budget, which only ends them early. The
    # function-scoped fixtures (ch, faults) serve the whole run: each sequence empties
    # both databases itself, in its first step.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)

HOUR = 3600.0
POISON_CONTEXT = '{"n": 1, oops'
FIXED_CONTEXT = '{"fixed": true}'


# What ClickHouse does with one INSERT (see FaultyClickHouse).
class Outcome(enum.Enum):
    NOT_LANDED = "not landed"
    LANDED = "landed"
    LANDED_AFTER_TIMEOUT = "landed after the client gave up"
    TOKEN_WITHOUT_ROWS = "token kept without rows"  # noqa: S105 (not a secret)
    ROWS_WITHOUT_TOKEN = "rows kept without token"  # noqa: S105 (not a secret)
    PREFIX_LANDED = "part of a multi-block insert landed"
    PAUSED_PAST_LEASE = "sender paused past its lease, then landed"
    LANDS_LATE = "client gave up, the server lands it before the next attempt"


OUTCOMES = st.lists(st.sampled_from(Outcome), max_size=3)

real_insert_tsv = clickhouse.insert_tsv


def _lost_connection() -> ClickHouseError:
    return ClickHouseError("Connection reset by peer (injected)", code=210)


class FaultyClickHouse:
    """Replaces ``clickhouse.insert_tsv``: each INSERT takes the next planned outcome.

    An INSERT ClickHouse refuses for its data is refused whatever the plan says (a
    refused INSERT writes nothing), so poison rows keep their meaning. Once the plan
    is used up, INSERTs simply land.
    """

    def __init__(self) -> None:
        self.plan: list[Outcome] = []
        self.logged: set[str] = set()  # tokens in ClickHouse's deduplication log
        # Runs while a relay is paused between its lease renewal and its INSERT.
        self.meanwhile: Callable[[], None] = lambda: None

        # INSERTs a server still works on after the client gave up: (table, block, token).
        self.late: list[tuple[str, bytes, str]] = []

    def reset(self) -> None:
        self.plan = []
        self.logged = set()
        self.late = []

    def land_late_inserts(self, ch: Any) -> None:
        """The server finishes the INSERTs whose clients gave up (refused ones write nothing)."""
        late, self.late = self.late, []
        for table, block, token in late:
            try:
                real_insert_tsv(ch, table=table, block=block, token=token)
            except ClickHouseError:
                continue
            self.logged.add(token)

    def __call__(
        self, ch: Any, *, table: str, block: bytes, token: str, timeout: float | None = None
    ) -> None:
        outcome = self.plan.pop(0) if self.plan else Outcome.LANDED
        if outcome == Outcome.NOT_LANDED:
            raise _lost_connection()
        if outcome == Outcome.LANDS_LATE:
            self.late.append((table, block, token))
            raise ClickHouseError("Read timed out (injected; the server goes on)", code=209)
        if outcome == Outcome.PAUSED_PAST_LEASE:
            # The sender renewed its lease, then stalled past it: another relay takes
            # the batch over and delivers it; then this INSERT goes out and lands.
            plan, self.plan = self.plan, []
            try:
                self.meanwhile()
            finally:
                self.plan = plan
        if outcome == Outcome.ROWS_WITHOUT_TOKEN:
            # A ClickHouse that died between writing the part and logging its token.
            # A token already logged makes ClickHouse drop the block before either.
            if token not in self.logged:
                real_insert_tsv(ch, table=table, block=block, token=f"lost-{uuid.uuid4()}")
            raise _lost_connection()
        if outcome == Outcome.PREFIX_LANDED:
            # The first block of a multi-block INSERT landed (ClickHouse logs a block's
            # token with its index, the first one as a single block's), the rest not.
            lines = block.splitlines(keepends=True)
            block = b"".join(lines[: max(1, len(lines) // 2)])
        real_insert_tsv(ch, table=table, block=block, token=token, timeout=timeout)
        self.logged.add(token)
        if outcome in {Outcome.LANDED, Outcome.PAUSED_PAST_LEASE}:
            return
        if outcome == Outcome.LANDED_AFTER_TIMEOUT:
            raise ClickHouseError("Read timed out (injected)", code=209)
        if outcome == Outcome.TOKEN_WITHOUT_ROWS:
            # A ClickHouse that died mid-INSERT: the token is in the deduplication log,
            # the rows are not; the client never heard back.
            ids = ",".join(f"'{line[:36].decode()}'" for line in block.splitlines())
            ch.command(f"DELETE FROM {table} WHERE event_id IN ({ids})")
        raise _lost_connection()


@dataclass
class Held:
    """A batch as one relay holds it, with the outcome of its last write, if any."""

    relay: str
    batch: Batch
    written: bool = False  # a holder writes once; then it finishes, postpones or dies
    delivery: Delivery | None = None


@dataclass
class Model:
    committed: set[uuid.UUID] = field(default_factory=set)
    poison: set[uuid.UUID] = field(default_factory=set)  # rows ClickHouse refuses now
    replayed: int = 0  # dead letters moved back to the outbox, ever


class RelayMachine(RuleBasedStateMachine):
    def __init__(self, probe: Any, faults: FaultyClickHouse) -> None:
        super().__init__()
        self.probe = probe
        self.faults = faults
        # Leases and back-offs never run out by themselves during a sequence: only
        # expire_leases ends them, so a sequence replays the same way when shrunk.
        self.config: EventLogSettings = event_log_settings(
            BATCH_SIZE=6, BACKOFF_INITIAL=HOUR, BACKOFF_MAX=HOUR, LEASE_SECONDS=HOUR
        )
        self.model = Model()
        self.held: list[Held] = []
        self.ch = clickhouse.connect(probe.url)
        faults.meanwhile = self._take_over

    # -- setup and teardown ---------------------------------------------------

    @initialize(count=st.integers(1, 12), poison=st.booleans(), budget=st.sampled_from([500, 3]))
    def start_from_a_fresh_outbox(self, count: int, poison: bool, budget: int = 500) -> None:
        # A small isolation budget leaves rows of an attempt for the next one.
        self.config = replace(self.config, ISOLATION_MAX_INSERTS=budget)
        with connection.cursor() as cur:
            cur.execute(
                "TRUNCATE event_log_outbox, event_log_batch, event_log_dead_letter,"
                " event_log_relay_stats"
            )
        self.ch.command(f"TRUNCATE TABLE {self.config.CLICKHOUSE_TABLE}")
        self.faults.reset()
        self.publish(count, poison)

    def teardown(self) -> None:
        try:
            self.faults.land_late_inserts(self.ch)
            if self.model.committed or self._outbox_ids():
                self._drain()
                self._check_final()
        finally:
            self.faults.plan = []
            self.ch.close()

    # -- rules ----------------------------------------------------------------

    @rule(count=st.integers(1, 5), poison=st.booleans())
    def publish(self, count: int, poison: bool) -> None:
        with transaction.atomic():
            ids = publish(*(Ping(n=n) for n in range(count)))
            if poison:
                ids.append(_insert_poison_row())
                self.model.poison.add(ids[-1])
        self.model.committed.update(ids)

    @rule(relay=st.sampled_from("AB"))
    def claim(self, relay: str) -> None:
        self._late_inserts_finish()
        batch = claim(self.config)
        if batch is not None:
            self.held.append(Held(relay, batch))

    @rule()
    def expire_leases(self) -> None:
        with connection.cursor() as cur:
            cur.execute("UPDATE event_log_batch SET lease_until = now() - interval '1 second'")

    @precondition(lambda self: any(not held.written for held in self.held))
    @rule(pick=st.integers(0, 10), plan=OUTCOMES)
    def write(self, pick: int, plan: list[Outcome]) -> None:
        unwritten = [held for held in self.held if not held.written]
        held = unwritten[pick % len(unwritten)]
        held.written = True
        self.faults.plan = list(plan)
        try:
            held.delivery = write(self.ch, self.config, held.batch, timeout=None)
        except (ClickHouseError, LeaseLostError):
            held.delivery = None
        finally:
            self.faults.plan = []

    @precondition(lambda self: any(held.delivery is not None for held in self.held))
    @rule(pick=st.integers(0, 10))
    def finish(self, pick: int) -> None:
        ready = [held for held in self.held if held.delivery is not None]
        held = ready[pick % len(ready)]
        assert held.delivery is not None
        self.held.remove(held)
        try:
            if held.delivery.delivered is None:
                finish(held.batch)
            else:
                finish_checked(held.batch, held.delivery, delay=HOUR)
        except LeaseLostError:
            pass

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 10))
    def postpone(self, pick: int) -> None:
        held = self.held.pop(pick % len(self.held))
        release(held.batch, delay=HOUR, error="postponed by the model")

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(0, 10))
    def crash(self, pick: int) -> None:
        """The holder dies: its batch waits for its lease to run out."""
        self.held.pop(pick % len(self.held))

    @rule(plan=OUTCOMES, batches=st.integers(1, 3))
    def run_relay(self, plan: list[Outcome], batches: int) -> None:
        self._late_inserts_finish()
        self.faults.plan = list(plan)
        relay = Relay(config=self.config, sleep=lambda _: None)
        try:
            relay.run(time_budget=5.0, max_batches=batches)
        finally:
            relay.close()
            self.faults.plan = []

    @precondition(lambda self: self.faults.late)
    @rule()
    def late_inserts_land(self) -> None:
        self.faults.land_late_inserts(self.ch)

    @rule(fix=st.booleans())
    def replay_dead_letters(self, fix: bool) -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT event_id FROM event_log_dead_letter")
            letters = {row[0] for row in cur.fetchall()}
            if fix:
                cur.execute("UPDATE event_log_dead_letter SET event_context = %s", [FIXED_CONTEXT])
        self.model.replayed += dead_letters_replay()
        if fix:
            self.model.poison -= letters

    # -- invariants -----------------------------------------------------------

    @invariant()
    def nothing_lost_duplicated_or_refused_in_clickhouse(self) -> None:
        stored = self._clickhouse_ids()
        assert len(stored) == len(set(stored)), f"duplicated in ClickHouse: {_twice(stored)}"
        assert set(stored) <= self.model.committed, "ClickHouse holds uncommitted events"
        assert not set(stored) & self.model.poison, "ClickHouse holds a row it must refuse"
        gone = self.model.committed - self._outbox_ids() - self._dead_letter_ids()
        assert gone <= set(stored), f"left the outbox, not in ClickHouse: {gone - set(stored)}"

    @invariant()
    def dead_letters_are_refused_rows_and_totals_match(self) -> None:
        letters = self._dead_letter_ids()
        assert letters <= self.model.poison, (
            f"dead-lettered good rows: {letters - self.model.poison}"
        )
        delivered, dead_lettered = self._totals()
        gone = self.model.committed - self._outbox_ids() - letters
        assert delivered == len(gone), "events_delivered counts rows delivered, once each"
        assert dead_lettered == len(letters) + self.model.replayed

    # -- helpers --------------------------------------------------------------

    def _take_over(self) -> None:
        """Another relay, after every lease ran out, delivers what it can."""
        self._late_inserts_finish()
        self.expire_leases()
        relay = Relay(config=self.config, sleep=lambda _: None)
        try:
            relay.run(time_budget=30.0)
        finally:
            relay.close()

    def _late_inserts_finish(self) -> None:
        """A server's late INSERT ends before the batch's next attempt: after a timeout
        the relay waits at least ``INSERT_TIMEOUT``, the server's ``max_execution_time``."""
        self.faults.land_late_inserts(self.ch)

    def _drain(self) -> None:
        """No more faults: expire leases and run relays until the outbox is empty."""
        for _ in range(20):
            with connection.cursor() as cur:
                cur.execute("UPDATE event_log_batch SET lease_until = now() - interval '1 second'")
            relay = Relay(config=self.config, sleep=lambda _: None)
            try:
                relay.run(time_budget=30.0)
            finally:
                relay.close()
            if not self._outbox_ids() and not _batches():
                return
        raise AssertionError(f"the outbox does not drain: {len(self._outbox_ids())} rows left")

    def _check_final(self) -> None:
        stored = self._clickhouse_ids()
        letters = self._dead_letter_ids()
        expected = self.model.committed - letters
        assert set(stored) == expected, (
            f"lost {expected - set(stored)}, unexpected {set(stored) - expected}"
        )
        assert len(stored) == len(expected), f"duplicated: {_twice(stored)}"
        assert _batches() == 0, "a batch is left"
        assert letters == self.model.poison, "dead letters are exactly the poison rows"
        delivered, dead_lettered = self._totals()
        assert delivered == len(expected)
        assert dead_lettered == len(letters) + self.model.replayed

    def _clickhouse_ids(self) -> list[uuid.UUID]:
        table = self.config.CLICKHOUSE_TABLE
        return [row[0] for row in clickhouse.query_rows(self.ch, f"SELECT event_id FROM {table}")]

    def _outbox_ids(self) -> set[uuid.UUID]:
        return _ids("SELECT event_id FROM event_log_outbox")

    def _dead_letter_ids(self) -> set[uuid.UUID]:
        return _ids("SELECT event_id FROM event_log_dead_letter")

    def _totals(self) -> tuple[int, int]:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT coalesce(sum(events_delivered), 0), coalesce(sum(events_dead_lettered), 0)"
                " FROM event_log_relay_stats"
            )
            delivered, dead_lettered = cur.fetchone()
        return int(delivered), int(dead_lettered)


def _ids(statement: str) -> set[uuid.UUID]:
    with connection.cursor() as cur:
        cur.execute(statement)
        return {row[0] for row in cur.fetchall()}


def _batches() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM event_log_batch")
        return int(cur.fetchone()[0])


def _twice(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    seen: set[uuid.UUID] = set()
    return {event_id for event_id in ids if event_id in seen or seen.add(event_id)}


def _insert_poison_row() -> uuid.UUID:
    """A row ClickHouse refuses (its CHECK wants JSON), as a buggy writer could leave."""
    event_id = uuid.uuid4()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO event_log_outbox (event_id, event_type, event_date_time, environment,"
            " event_context, metadata_version) VALUES (%s, 'ping', now(), 'test', %s, 1)",
            [event_id, POISON_CONTEXT],
        )
    return event_id


@pytest.fixture
def faults(ch: Any, monkeypatch: pytest.MonkeyPatch) -> FaultyClickHouse:
    injector = FaultyClickHouse()
    monkeypatch.setattr(clickhouse, "insert_tsv", injector)
    return injector


@pytest.mark.timeout(0)
def test_any_sequence_of_steps_and_clickhouse_outcomes_delivers_each_event_once(ch, faults):
    run_state_machine_as_test(lambda: RelayMachine(ch, faults), settings=MODEL_SETTINGS)


# -- counterexamples the machine found, kept as plain tests ---------------------------
# Each is the shrunk sequence the machine reported when one safeguard of the relay was
# taken out; each passes with the safeguard and fails without it.


def _replay(machine: RelayMachine, *steps: Callable[[], object]) -> None:
    """Run ``steps`` with the invariants checked after each, then the final drain."""
    try:
        for step in steps:
            step()
            machine.nothing_lost_duplicated_or_refused_in_clickhouse()
            machine.dead_letters_are_refused_rows_and_totals_match()
    finally:
        machine.teardown()


def test_a_sender_paused_past_its_lease_sends_nothing_after_the_take_over(ch, faults):
    """Without the lease renewal before each INSERT, the paused sender's bisection finds
    the batch's rows gone from the outbox, takes them for missing and sends them again."""
    machine = RelayMachine(ch, faults)
    _replay(
        machine,
        lambda: machine.start_from_a_fresh_outbox(count=1, poison=True),
        lambda: machine.run_relay(plan=[Outcome.PAUSED_PAST_LEASE], batches=1),
    )


def test_an_insert_that_lands_after_a_take_over_is_dropped_as_a_duplicate(ch, faults):
    """Tokens follow the rows, not the attempt: the first holder's INSERT, landing after
    the second holder delivered, carries the same token and is dropped."""
    machine = RelayMachine(ch, faults)
    _replay(
        machine,
        lambda: machine.start_from_a_fresh_outbox(count=1, poison=False),
        lambda: machine.run_relay(plan=[Outcome.PAUSED_PAST_LEASE], batches=1),
    )


def test_a_resent_batch_whose_rows_clickhouse_kept_without_the_token_lands_once(ch, faults):
    """Without the lookup before a re-send, the second attempt's INSERT stores the rows
    that the first one left under no token a second time."""
    machine = RelayMachine(ch, faults)
    _replay(
        machine,
        lambda: machine.start_from_a_fresh_outbox(count=3, poison=False),
        lambda: machine.run_relay(plan=[Outcome.ROWS_WITHOUT_TOKEN], batches=1),
        machine.expire_leases,
        lambda: machine.run_relay(plan=[], batches=1),
    )


def test_a_resent_batch_whose_token_clickhouse_kept_without_its_rows_is_delivered(ch, faults):
    """Without the lookup before a re-send, the second attempt's INSERT is dropped as a
    duplicate of a token without rows, acknowledged, and the rows deleted: lost."""
    machine = RelayMachine(ch, faults)
    _replay(
        machine,
        lambda: machine.start_from_a_fresh_outbox(count=3, poison=False),
        lambda: machine.run_relay(plan=[Outcome.TOKEN_WITHOUT_ROWS], batches=1),
        machine.expire_leases,
        lambda: machine.run_relay(plan=[], batches=1),
    )


def test_a_batch_with_more_poison_rows_than_the_isolation_budget_is_still_drained(ch, faults):
    """Each attempt must confirm some refused row before its budget is spent: sending
    the rest first, then its rest, … spent a budget of 3 on three refusals and left a
    batch with three poison rows unchanged, attempt after attempt."""
    machine = RelayMachine(ch, faults)
    _replay(
        machine,
        lambda: machine.start_from_a_fresh_outbox(count=1, poison=True, budget=3),
        lambda: machine.publish(count=1, poison=True),
        lambda: machine.publish(count=1, poison=True),
    )
