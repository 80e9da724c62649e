"""Every state change the store makes follows the transition table (edge_outbox.states).

A hypothesis state machine drives a real outbox database through the ops functions (intake, sending,
bridge acks, cancel, retry, expiry, revocation) and keeps a model that moves each intent only by
`step()`. After every operation the database must equal the model, and stats and events must agree.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_outbox import db, forward_ops, ops
from edge_outbox.errors import ConfigError, IllegalTransitionError
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from edge_outbox.states import RETRYABLE, Event, State, event_for_ack, sources, step, target
from intent_contract.codec import Ack, AckState

IDS = [f"i{n}" for n in range(6)]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.conn = db.connect(Path(self._dir.name))
        self.conn.execute("PRAGMA synchronous = OFF")  # logic, not durability, is under test here
        self.now = 1_000_000
        self.model: dict[str, tuple[State, bool, int | None]] = {}  # id -> (state, sent, expires)
        self.attempts: dict[str, int] = {}  # id -> attempt
        self.events_seen = 0

    def teardown(self) -> None:
        self.conn.close()
        self._dir.cleanup()

    def _tx(self, fn: object, *args: object, **kwargs: object) -> object:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.conn, *args, **kwargs)  # type: ignore[operator]
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    @rule(intent_id=st.sampled_from(IDS), ttl=st.none() | st.integers(1, 5))
    def intake(self, intent_id: str, ttl: int | None) -> None:
        expires = None if ttl is None else self.now + ttl
        item = Admitted(intent_id, "app", "email.send", b"{}", 0, self.now, expires, True)
        self._tx(ops.commit_intake, item, QueueLimits(), self.now)
        # A new intent, also under the id of one the bridge rejected (rejected rows never block an id).
        if intent_id not in self.model or self.model[intent_id][0] is State.REJECTED:
            self.model[intent_id] = (State.ACCEPTED, False, expires)
            self.attempts[intent_id] = 1

    @rule(intent_ids=st.lists(st.sampled_from(IDS), min_size=2, max_size=4))
    def intake_batch(self, intent_ids: list[str]) -> None:
        """One batch of publishes, an id repeated within it or already stored: each id is stored once."""
        items = [Admitted(i, "app", "email.send", b"{}", 0, self.now, None, True) for i in intent_ids]
        self._tx(ops.commit_intakes, items, QueueLimits(), self.now)
        for intent_id in intent_ids:
            if intent_id not in self.model or self.model[intent_id][0] is State.REJECTED:
                self.model[intent_id] = (State.ACCEPTED, False, None)
                self.attempts[intent_id] = 1

    @rule()
    def send(self) -> None:
        rows = self._tx(forward_ops.take_batch, limit=10, max_bytes=1 << 20, sent_before=self.now + 1, now=self.now)
        for row in rows:  # type: ignore[attr-defined]
            state, _sent, expires = self.model[row.id]
            self.model[row.id] = (state, True, expires)

    @rule(intent_id=st.sampled_from(IDS), ack=st.sampled_from(list(AckState)))
    def bridge_ack(self, intent_id: str, ack: AckState) -> None:
        self._tx(forward_ops.apply_acks, [Ack(intent_id, ack, "c", "", self.now)], self.now)
        if intent_id in self.model:
            state, sent, expires = self.model[intent_id]
            self.model[intent_id] = (step(state, event_for_ack(ack), sent=sent).state, sent, expires)

    @rule(intent_id=st.sampled_from(IDS), ack=st.sampled_from(list(AckState)), delta=st.sampled_from([-1, 0, 1]))
    def bridge_ack_with_attempt(self, intent_id: str, ack: AckState, delta: int) -> None:
        """An ack naming the bridge's attempt: an older one is stale, a newer one a retry at the bridge."""
        if intent_id not in self.model:
            return
        state, sent, expires = self.model[intent_id]
        attempt = self.attempts[intent_id] + delta
        if attempt < 1:
            return
        self._tx(forward_ops.apply_acks, [Ack(intent_id, ack, "c", "", self.now, attempt=attempt)], self.now)
        if delta < 0:
            return  # stale: nothing changes
        if delta > 0 and state in RETRYABLE:
            state = step(state, Event.RERUN).state
        if delta > 0 and not state.final:  # a rerun made it forwarded; delivered, rejected, cancelled stay
            self.attempts[intent_id] = attempt
        self.model[intent_id] = (step(state, event_for_ack(ack), sent=sent).state, sent, expires)

    @rule(intent_id=st.sampled_from(IDS), event=st.sampled_from([Event.CANCEL, Event.RETRY]))
    def operator(self, intent_id: str, event: Event) -> None:
        fn = ops.cancel if event is Event.CANCEL else ops.retry
        if intent_id not in self.model:
            return
        state, sent, expires = self.model[intent_id]
        try:
            expected = step(state, event, sent=sent)
        except IllegalTransitionError:
            try:
                self._tx(fn, intent_id, self.now)
            except IllegalTransitionError:
                return
            raise AssertionError(f"the store allowed {event} on a {state} intent") from None
        self._tx(fn, intent_id, self.now)
        if event is Event.RETRY:
            sent, expires = False, None
            self.attempts[intent_id] += 1
        self.model[intent_id] = (expected.state, sent, expires)

    @rule(seconds=st.integers(0, 6))
    def time_passes_and_deadlines_expire(self, seconds: int) -> None:
        self.now += seconds
        self._tx(ops.expire_due, self.now)
        for intent_id, (state, sent, expires) in self.model.items():
            if state in sources(Event.DEADLINE) and not sent and expires is not None and expires <= self.now:
                self.model[intent_id] = (target(Event.DEADLINE), sent, expires)

    @precondition(lambda self: len(self.model) > 2)
    @rule()
    def revoked(self) -> None:
        self._tx(ops.end_revoked, self.now)
        codes = dict(self.conn.execute("SELECT id, code FROM intents ORDER BY seq"))
        for intent_id, (state, sent, expires) in self.model.items():
            if state in sources(Event.REVOKE):
                self.model[intent_id] = (step(state, Event.REVOKE, sent=sent).state, sent, expires)
                # Never sent and never forwarded: it certainly did not run; otherwise it may have.
                unknown = sent or state is State.FORWARDED
                assert codes[intent_id] == ("device_revoked_unknown" if unknown else "device_revoked")

    @invariant()
    def database_equals_model(self) -> None:
        live = dict(self.conn.execute("SELECT id, state FROM intents ORDER BY seq"))  # the newest row per id
        assert live == {i: s.value for i, (s, _sent, _exp) in self.model.items()}

    @invariant()
    def one_row_per_id_is_not_rejected(self) -> None:
        """No unique index holds this (a partial one cost every state change): the intake does."""
        assert (
            self.conn.execute(
                "SELECT id FROM intents WHERE state <> 'rejected' GROUP BY id HAVING COUNT(*) > 1"
            ).fetchall()
            == []
        )

    @invariant()
    def attempts_equal_model(self) -> None:
        live = dict(self.conn.execute("SELECT id, attempt FROM intents ORDER BY seq"))  # the newest row per id
        assert live == self.attempts

    @invariant()
    def stats_count_every_row(self) -> None:
        stats = {s: n for s, n, _b in self.conn.execute("SELECT state, items, bytes FROM stats") if n}
        counted = dict(self.conn.execute("SELECT state, COUNT(*) FROM intents GROUP BY state"))
        assert stats == counted

    @invariant()
    def every_change_has_a_status_event(self) -> None:
        last: dict[str, str] = {}
        for intent_id, state in self.conn.execute("SELECT id, state FROM events ORDER BY seq"):
            last[intent_id] = state
        assert {i: s for i, s in last.items() if i in self.model} == {i: s.value for i, (s, _, _) in self.model.items()}


TestStore = StoreMachine.TestCase
TestStore.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_sqlite_connection_type() -> None:
    """The machine runs against the real schema (the triggers included), not a stand-in."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = db.connect(Path(tmp))
        assert isinstance(conn, sqlite3.Connection)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        conn.close()
    assert {"intents_ins", "intents_upd", "intents_del"} <= names
    assert "intents_by_id" in indexes and "intents_id" not in indexes  # no unique index: the intake keeps ids


def test_a_database_made_with_the_unique_index_loses_it_at_its_next_start(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    conn.execute("DROP INDEX intents_by_id")
    conn.execute("CREATE UNIQUE INDEX intents_id ON intents(id) WHERE state <> 'rejected'")  # as made before
    conn.execute(
        "INSERT INTO intents(id, app, kind, state, created, updated, payload, size)"
        " VALUES ('i0', 'app', 'notify', 'accepted', 1, 1, X'7B7D', 2)"
    )
    conn.close()
    conn = db.connect(tmp_path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT seq FROM intents WHERE id = 'i0'").fetchall()
    assert conn.execute("SELECT id, state FROM intents").fetchall() == [("i0", "accepted")]
    conn.close()
    assert "intents_id" not in indexes and "intents_by_id" in indexes
    assert "intents_by_id" in plan[0][3]


def test_a_sqlite_too_old_for_the_acks_statements_is_named_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigError, match=r"SQLite is 3\.31\.1; the outbox needs 3\.33\.0 or later"):
        db.connect(tmp_path / "data")
    assert not (tmp_path / "data").exists()
