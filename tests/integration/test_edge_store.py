"""The SQLite store: group commit, deduplication, queue limits, ops commands and derived tables."""

import asyncio
import itertools
import json
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_outbox import db, event_log, forward_ops, ops, retention
from edge_outbox.errors import IllegalTransitionError, NotFoundError
from edge_outbox.intake_rules import Admitted, Refused, admit
from edge_outbox.ops import Outcome, QueueLimits
from edge_outbox.states import PENDING, State
from edge_outbox.store import Store
from intent_contract.sqlite_rows import ManyRows

NOW = 1_800_000_000_000
GOOD = json.dumps({"to": "ops@example.com", "subject": "S", "text": "t"}).encode()
ids = itertools.count()


def intent(app: str = "hvac", intent_id: str | None = None, body: bytes = GOOD, **kw: object) -> Admitted:
    fields: dict[str, object] = {
        "id": intent_id or f"i{next(ids)}",
        "app": app,
        "kind": "email.send",
        "payload": body,
        "priority": 0,
        "created": NOW,
        "expires": None,
        "id_given": True,
    }
    fields.update(kw)
    return Admitted(**fields)  # type: ignore[arg-type]


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return db.connect(tmp_path)


def actual_stats(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    rows = conn.execute("SELECT state, COUNT(*), SUM(size) FROM intents GROUP BY state")
    return {state: (count, size) for state, count, size in rows}


def derived_stats(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    return {s: (i, b) for s, i, b in conn.execute("SELECT state, items, bytes FROM stats WHERE items > 0")}


def test_duplicate_id_from_same_app_is_not_stored_twice(conn: sqlite3.Connection) -> None:
    first = ops.commit_intake(conn, intent(intent_id="a1"), QueueLimits(), NOW)
    again = ops.commit_intake(conn, intent(intent_id="a1"), QueueLimits(), NOW + 5)
    assert first.outcome is Outcome.STORED
    assert again.outcome is Outcome.DUPLICATE
    assert again.row == first.row
    assert conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 1


def test_same_id_from_another_app_is_rejected_not_merged(conn: sqlite3.Connection) -> None:
    ops.commit_intake(conn, intent(app="a", intent_id="x1"), QueueLimits(), NOW)
    other = ops.commit_intake(conn, intent(app="b", intent_id="x1"), QueueLimits(), NOW)
    assert other.row is not None
    assert (other.row.state, other.row.code, other.row.app) == (State.REJECTED, "id_conflict", "b")
    assert ops.get(conn, "x1").app == "a"


def test_queue_limits_refuse_new_but_never_evict(conn: sqlite3.Connection) -> None:
    limits = QueueLimits(max_items=3)
    outcomes = [ops.commit_intake(conn, intent(), limits, NOW).outcome for _ in range(5)]
    assert outcomes == [Outcome.STORED] * 3 + [Outcome.QUEUE_FULL] * 2
    assert ops.summary(conn).pending == 3
    by_bytes = QueueLimits(max_bytes=len(GOOD) * 2)
    conn.execute("DELETE FROM intents")
    outcomes = [ops.commit_intake(conn, intent(), by_bytes, NOW).outcome for _ in range(3)]
    assert outcomes == [Outcome.STORED, Outcome.STORED, Outcome.QUEUE_FULL]


def test_expiry_on_arrival_and_while_waiting(conn: sqlite3.Connection) -> None:
    late = ops.commit_intake(conn, intent(expires=NOW - 1), QueueLimits(), NOW)
    assert late.row is not None and late.row.state is State.EXPIRED
    waiting = ops.commit_intake(conn, intent(expires=NOW + 1000), QueueLimits(), NOW).row
    assert waiting is not None
    assert ops.expire_due(conn, NOW + 999) == 0
    assert ops.expire_due(conn, NOW + 1000) == 1
    assert ops.get(conn, waiting.id).state is State.EXPIRED
    # retry clears the deadline and starts a new attempt
    conn.execute("UPDATE intents SET sent = 1, sent_at = ? WHERE id = ?", (NOW + 1500, waiting.id))
    retried = ops.retry(conn, waiting.id, NOW + 2000)
    assert (retried.state, retried.attempt, retried.expires) == (State.ACCEPTED, 2, None)
    assert (retried.sent, retried.sent_at) == (0, 0)  # eligible to be sent at once, and cancellable again


def test_cancel_refuses_sent_intents_and_changes_nothing(conn: sqlite3.Connection) -> None:
    row = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
    assert row is not None
    conn.execute("UPDATE intents SET sent = 1 WHERE seq = ?", (row.seq,))
    with pytest.raises(IllegalTransitionError, match="already sent"):
        ops.cancel(conn, row.id, NOW)
    assert ops.get(conn, row.id).state is State.ACCEPTED
    fresh = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
    assert fresh is not None
    assert ops.cancel(conn, fresh.id, NOW).state is State.CANCELLED
    with pytest.raises(NotFoundError):
        ops.cancel(conn, "nope", NOW)


def test_an_empty_id_names_no_intent(conn: sqlite3.Connection) -> None:
    """An empty id was the start of every id: with one intent stored, `edge-outbox cancel ""` cancelled it."""
    row = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
    assert row is not None
    with pytest.raises(NotFoundError, match="give an intent id"):
        ops.cancel(conn, "", NOW)
    assert ops.get(conn, row.id).state is State.ACCEPTED


def test_purge_never_deletes_pending(conn: sqlite3.Connection) -> None:
    pending = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
    done = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
    assert pending is not None and done is not None
    ops.cancel(conn, done.id, NOW)
    assert retention.purge(conn, NOW + 10**9) == 1
    assert ops.get(conn, pending.id).state is State.ACCEPTED
    with pytest.raises(IllegalTransitionError):
        retention.purge(conn, NOW + 10**9, [State.ACCEPTED])


def test_purge_and_prune_take_at_most_their_limit(conn: sqlite3.Connection) -> None:
    for _ in range(5):
        row = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
        assert row is not None
        ops.cancel(conn, row.id, NOW)
    assert [retention.purge(conn, NOW + 1, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 0
    last = event_log.last_event_seq(conn)
    assert [retention.prune_events(conn, last, NOW + 1, limit=7) for _ in range(3)] == [7, 3, 0]  # accepted + cancelled


def test_every_state_change_is_an_event(conn: sqlite3.Connection) -> None:
    row = ops.commit_intake(conn, intent(), QueueLimits(), NOW).row
    assert row is not None
    ops.cancel(conn, row.id, NOW + 1)
    states = [e.state for e in event_log.events_after(conn, 0)]
    assert states == [State.ACCEPTED, State.CANCELLED]


def _contents(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], ...]:
    return (
        conn.execute("SELECT * FROM intents ORDER BY seq").fetchall(),
        conn.execute("SELECT id, app, kind, state, code, detail, at FROM events ORDER BY seq").fetchall(),
        conn.execute("SELECT * FROM stats ORDER BY state").fetchall(),
    )


def test_a_batch_stores_what_the_same_intakes_one_by_one_store(tmp_path: Path) -> None:
    """Every kind of decision mixed in one batch of 700 (so inserts go in statements of 256, 64, 16, 4
    and 1 rows): the results, rows, events and stats are those of the same intakes committed one by one."""
    rng = random.Random(7)
    items: list[Admitted | Refused] = []
    for n in range(700):
        roll = rng.random()
        if roll < 0.1 and items:  # the same id again, from the same app or from another
            earlier = rng.choice([i for i in items if isinstance(i, Admitted)])
            items.append(intent(app=rng.choice([earlier.app, "other"]), intent_id=earlier.id))
        elif roll < 0.15:
            items.append(admit("outbox/x/email.send", b"{", NOW, lambda n=n: f"bad{n}"))  # type: ignore[misc]
        elif roll < 0.2:
            items.append(intent(intent_id=f"late{n}", expires=NOW - 1))
        else:
            items.append(intent(intent_id=f"b{n}", priority=rng.randint(0, 3)))
    limits = QueueLimits(max_items=500)
    batched, single = db.connect(tmp_path / "batched"), db.connect(tmp_path / "single")
    together = ops.commit_intakes(batched, items, limits, NOW)
    alone = [ops.commit_intake(single, item, limits, NOW) for item in items]
    assert together == alone
    assert {r.outcome for r in together} == set(Outcome)
    assert _contents(batched) == _contents(single)
    stored = {row.seq: row for row in ops.listing(batched, limit=10_000, payloads=True)}
    assert all(stored[r.row.seq] == r.row for r in together if r.row is not None)


def test_rows_inserted_together_get_the_keys_they_are_stored_under(conn: sqlite3.Connection) -> None:
    """Keys come from the last row's; the newest rows deleted first must not make them wrong."""
    ops.commit_intakes(conn, [intent() for _ in range(300)], QueueLimits(), NOW)
    conn.execute("DELETE FROM intents WHERE seq > 250")
    again = ops.commit_intakes(conn, [intent() for _ in range(300)], QueueLimits(), NOW)
    stored = {row.seq: row for row in ops.listing(conn, limit=10_000, payloads=True)}
    assert [r.row.seq for r in again if r.row] == list(range(301, 601))
    assert all(stored[r.row.seq] == r.row for r in again if r.row)
    with pytest.raises(ValueError, match="16 values"):
        ManyRows.into("intents", db.COLUMNS[1:]).insert(conn, [("too", "short")])


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.sampled_from(["add", "dup", "cancel", "expire", "retry", "purge", "bad"]), max_size=30))
def test_derived_stats_always_match_the_rows(tmp_path_factory: pytest.TempPathFactory, actions: list[str]) -> None:
    conn = db.connect(tmp_path_factory.mktemp("stats"))
    now = NOW
    for action in actions:
        now += 10
        rows = ops.listing(conn, limit=1000)
        try:
            if action == "add":
                ops.commit_intake(conn, intent(expires=now + 15), QueueLimits(), now)
            elif action == "dup" and rows:
                ops.commit_intake(conn, intent(app=rows[0].app, intent_id=rows[0].id), QueueLimits(), now)
            elif action == "bad":
                ops.commit_intake(
                    conn, admit("outbox/x/email.send", b"{", now, lambda: f"b{next(ids)}"), QueueLimits(), now
                )
            elif action == "cancel" and rows:
                ops.cancel(conn, rows[-1].id, now)
            elif action == "expire":
                ops.expire_due(conn, now)
            elif action == "retry" and rows:
                ops.retry(conn, rows[0].id, now)
            elif action == "purge":
                retention.purge(conn, now)
        except IllegalTransitionError:
            pass
        assert derived_stats(conn) == actual_stats(conn)
    conn.close()


async def test_group_commit_shares_commits_between_concurrent_callers(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.start()
    try:
        results = await asyncio.gather(
            *(store.call(ops.commit_intake, intent(), QueueLimits(), NOW) for _ in range(500))
        )
    finally:
        await store.close()
    assert all(r.outcome is Outcome.STORED for r in results)
    assert store.commits < 100, f"{store.commits} commits for 500 calls: no grouping"
    conn = db.connect(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 500


async def test_one_failing_operation_does_not_undo_the_rest_of_its_group(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.start()
    try:
        good = [store.call(ops.commit_intake, intent(), QueueLimits(), NOW) for _ in range(20)]
        bad = store.call(ops.cancel, "no-such-id", NOW)
        results = await asyncio.gather(*good, bad, return_exceptions=True)
    finally:
        await store.close()
    assert isinstance(results[-1], NotFoundError)
    assert sum(1 for r in results[:-1] if not isinstance(r, BaseException)) == 20
    assert db.connect(tmp_path).execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 20


async def test_events_from_other_processes_reach_the_publisher(tmp_path: Path) -> None:
    seen: list[State] = []
    store = Store(tmp_path, on_events=lambda new: seen.extend(e.state for e in new.events or []))
    await store.start()
    try:
        row = (await store.call(ops.commit_intake, intent(), QueueLimits(), NOW)).row
        assert row is not None
        other = db.connect(tmp_path)  # as the ops CLI would, in its own connection
        other.execute("BEGIN IMMEDIATE")
        ops.cancel(other, row.id, NOW + 1)
        other.execute("COMMIT")
        async with asyncio.timeout(5):
            while State.CANCELLED not in seen:
                await asyncio.sleep(0.05)
    finally:
        await store.close()
    assert seen == [State.ACCEPTED, State.CANCELLED]


async def test_without_a_reader_the_store_reports_the_newest_event_and_its_flags_only(tmp_path: Path) -> None:
    """Nobody reads statuses: each group's report names the newest seq, whether something was accepted (the
    forwarder's cue) and whether something ended (the intake's), without the events; once a reader comes,
    the events after that seq, none twice."""
    seen: list[event_log.EventsSeen] = []
    reading = [False]
    store = Store(tmp_path, on_events=seen.append, wants_events=lambda: reading[0])

    async def reported(head: int) -> event_log.EventsSeen:
        async with asyncio.timeout(5):
            while not seen or seen[-1].head < head:
                await asyncio.sleep(0.01)
        return seen[-1]

    await store.start()
    try:
        first = (await store.call(ops.commit_intake, intent(), QueueLimits(), NOW)).row
        second = (await store.call(ops.commit_intake, intent(), QueueLimits(), NOW)).row
        assert first is not None and second is not None
        head = await store.read(event_log.last_event_seq)
        assert await reported(head) == event_log.EventsSeen(head, True, False, None)
        await store.call(ops.cancel, first.id, NOW + 1)
        cancelled = await store.read(event_log.last_event_seq)
        assert await reported(cancelled) == event_log.EventsSeen(cancelled, False, True, None)
        reading[0] = True
        await store.call(ops.cancel, second.id, NOW + 2)
        last = await reported(cancelled + 1)
    finally:
        await store.close()
    assert [(e.id, e.state) for e in last.events or []] == [(second.id, State.CANCELLED)]
    assert (last.head, last.accepted, last.final) == (cancelled + 1, False, True)


async def test_the_writer_keeps_statement_journals_in_memory(tmp_path: Path) -> None:
    """Each operation's savepoint journal: spilled to a temporary file it cost the intake a fifth of its CPU."""
    store = Store(tmp_path)
    await store.start()
    try:
        temp_store = await store.read(lambda conn: conn.execute("PRAGMA temp_store").fetchone()[0])
    finally:
        await store.close()
    assert temp_store == 2  # MEMORY


def _broken_operation(_conn: sqlite3.Connection) -> None:
    raise ZeroDivisionError("a bug in one operation")


async def test_a_bug_in_one_operation_fails_only_that_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    await store.start()
    try:
        with pytest.raises(ZeroDivisionError):
            await store.call(_broken_operation)
        result = await store.call(ops.commit_intake, intent(), QueueLimits(), NOW)  # the writer is still alive
    finally:
        await store.close()
    assert result.outcome is Outcome.STORED
    assert "_broken_operation failed" in caplog.text


def test_batches_take_priority_then_age_within_caps(conn: sqlite3.Connection) -> None:
    for n, priority in enumerate([0, 5, 0, 9, 5]):
        ops.commit_intake(conn, intent(intent_id=f"b{n}", priority=priority), QueueLimits(), NOW + n)
    batch = forward_ops.next_batch(conn, limit=10, max_bytes=10**6, sent_before=NOW, now=NOW)
    assert [r.id for r in batch] == ["b3", "b1", "b4", "b0", "b2"]
    assert [r.id for r in forward_ops.next_batch(conn, limit=2, max_bytes=10**6, sent_before=NOW, now=NOW)] == [
        "b3",
        "b1",
    ]
    # the byte cap stops a batch, but never below one intent
    assert len(forward_ops.next_batch(conn, limit=10, max_bytes=len(GOOD) * 2, sent_before=NOW, now=NOW)) == 2
    assert len(forward_ops.next_batch(conn, limit=10, max_bytes=1, sent_before=NOW, now=NOW)) == 1
    # sent ones are skipped until they are due again, and can no longer be cancelled
    taken = forward_ops.take_batch(conn, limit=2, max_bytes=10**6, sent_before=NOW, now=NOW + 100)
    assert [r.id for r in taken] == ["b3", "b1"]
    assert [
        r.id for r in forward_ops.next_batch(conn, limit=10, max_bytes=10**6, sent_before=NOW + 100, now=NOW + 100)
    ] == [
        "b4",
        "b0",
        "b2",
    ]
    assert len(forward_ops.next_batch(conn, limit=10, max_bytes=10**6, sent_before=NOW + 101, now=NOW + 101)) == 5
    with pytest.raises(IllegalTransitionError):
        ops.cancel(conn, "b3", NOW)


def test_acks_apply_once_and_final_ids_are_confirmed(conn: sqlite3.Connection) -> None:
    from intent_contract.codec import Ack, AckState

    ops.commit_intake(conn, intent(intent_id="k1"), QueueLimits(), NOW)
    ops.commit_intake(conn, intent(intent_id="k2"), QueueLimits(), NOW)
    applied = forward_ops.apply_acks(
        conn, [Ack("k1", AckState.ACCEPTED), Ack("k2", AckState.FAILED, "smtp_550", "no")], NOW
    )
    assert (applied.changed, applied.final_ids) == (2, ["k2"])
    assert ops.get(conn, "k1").state is State.FORWARDED
    failed = ops.get(conn, "k2")
    assert (failed.state, failed.code, failed.detail) == (State.FAILED, "smtp_550", "no")
    # a repeated or late ack changes nothing but is still confirmed; an unknown id is harmless
    again = forward_ops.apply_acks(conn, [Ack("k2", AckState.DELIVERED), Ack("gone", AckState.DELIVERED)], NOW)
    assert (again.changed, again.final_ids) == (0, ["k2", "gone"])
    assert ops.get(conn, "k2").state is State.FAILED
    ops.commit_intake(conn, intent(intent_id="k3"), QueueLimits(), NOW)
    assert ops.end_revoked(conn, NOW) == 2
    assert ops.get(conn, "k1").code == "device_revoked_unknown"  # forwarded: it may have run
    assert ops.get(conn, "k3").code == "device_revoked"  # never sent: it certainly did not


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.integers(min_value=0, max_value=9), st.sampled_from(list(State)), st.integers(0, 5_000)),
        max_size=30,
    )
)
def test_the_oldest_pending_creation_time_is_the_smallest_at_any_priority(
    tmp_path: Path, rows: list[tuple[int, State, int]]
) -> None:
    conn = db.connect(tmp_path / f"s{next(ids)}")
    created, pending = NOW, []
    for priority, state, step in rows:  # stored in the order created, as the intake stores them
        created += step
        stored = ops.commit_intake(conn, intent(priority=priority, created=created), QueueLimits(), created).row
        assert stored is not None
        conn.execute("UPDATE intents SET state = ? WHERE seq = ?", (str(state), stored.seq))
        if state in PENDING:
            pending.append(created)
    assert ops.summary(conn).oldest_pending_created == min(pending, default=None)


def test_the_oldest_pending_intent_is_found_without_reading_every_pending_row(tmp_path: Path) -> None:
    def steps(pending: int) -> int:
        """SQLite's virtual machine steps to find the oldest pending intent among `pending`."""
        conn = db.connect(tmp_path / str(pending))
        ops.commit_intakes(conn, [intent(priority=n % 10) for n in range(pending)], QueueLimits(), NOW)
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        conn.set_progress_handler(count, 1)
        assert conn.execute(ops._OLDEST_PENDING).fetchone()[0] == NOW
        return counted[0]

    # MIN(created) over the pending rows took 10 times the steps for 10 times the rows
    assert steps(3_000) < 1.5 * steps(300)
