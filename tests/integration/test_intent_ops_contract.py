"""Operators' intent operations (operator_api on the store's SqlIntents), on every store backend:
list, show, retry, cancel, the refusals the ledger's table makes, audit, the status the device hears,
signals to the running nodes, purge and retention (never a live row)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge import operator_api
from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import AmbiguousIntentError, BridgeError, LedgerStateError, UnknownIntentError
from cloud_bridge.intent_sql import IntentQuery, PurgePace, SqlIntents
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.retention import Retention
from cloud_bridge.store import Store
from cloud_bridge.store.pg_pools import PgPools
from cloud_bridge.store.pg_signals import operator_signal
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from tests.support.net import until
from tests.support.stores import admit, opened, pg_url, store, store_url, waiting_for_a_lock

__all__ = ["pg_url", "store", "store_url"]  # fixtures

NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")
OTHER = DeviceRef("dev-2", "globex", "pump-1")
DAY = 86_400.0


def env(ident: str, kind: str = "email.send", created: float = NOW) -> Envelope:
    return Envelope(ident, "hvac-ui", kind, int(created * 1000) - 5000, None, 1, {"to": "a@example.com"})


def allow(_envelope: Envelope) -> Decision:
    return Decision(True)


async def _failed(store: Store, device: DeviceRef, ident: str, now: float = NOW) -> None:
    await admit(store.ledger, device, [env(ident, created=now)], allow, now)
    [entry] = await store.ledger.claim(["email.send"], 1, now)
    await store.ledger.finish(entry, EntryState.FAILED, "smtp_refused", "550 no", now, "smtp")


def _ops(store: Store, fn: object, *args: object, **kwargs: object) -> object:
    return fn(store.intents, *args, **kwargs)  # type: ignore[operator]


async def test_list_filters_and_shows_newest_first(store: Store) -> None:
    await _failed(store, DEV, "d", NOW)
    await admit(store.ledger, DEV, [env("a"), env("b", "sms.send")], allow, NOW + 1)
    await admit(store.ledger, OTHER, [env("c")], allow, NOW + 2)
    every = operator_api.list_intents(store.intents, IntentQuery())
    assert [i.intent_id for i in every] == ["c", "b", "a", "d"]
    assert [i.intent_id for i in operator_api.list_intents(store.intents, IntentQuery(device_id="dev-1"))] == [
        "b", "a", "d",
    ]  # fmt: skip
    assert [i.intent_id for i in operator_api.list_intents(store.intents, IntentQuery(tenant="globex"))] == ["c"]
    assert [i.intent_id for i in operator_api.list_intents(store.intents, IntentQuery(kind="sms.send"))] == ["b"]
    [failed] = operator_api.list_intents(store.intents, IntentQuery(state=EntryState.FAILED))
    assert (failed.intent_id, failed.code, failed.retryable, failed.cancellable) == ("d", "smtp_refused", True, False)
    assert len(operator_api.list_intents(store.intents, IntentQuery(limit=2))) == 2
    doc = failed.to_json()
    assert doc["state"] == "failed" and doc["updated"].endswith("Z") and "payload" not in doc


async def test_show_by_device_and_id_or_by_a_unique_id(store: Store) -> None:
    await admit(store.ledger, DEV, [env("a"), env("shared")], allow, NOW)
    await admit(store.ledger, OTHER, [env("shared")], allow, NOW)
    assert operator_api.show_intent(store.intents, ["a"]).intent.device_id == "dev-1"
    shown = operator_api.show_intent(store.intents, ["dev-2", "shared"])
    assert shown.intent.tenant == "globex"
    assert [(r.device_id, r.event) for r in shown.history] == [("dev-2", AuditEvent.ACCEPT)]
    with pytest.raises(AmbiguousIntentError, match="dev-1, dev-2"):
        operator_api.show_intent(store.intents, ["shared"])
    with pytest.raises(UnknownIntentError, match="no intent nope of device dev-1"):
        operator_api.show_intent(store.intents, ["dev-1", "nope"])


async def test_retry_requeues_a_failed_row_as_a_new_attempt_audited_and_announced(store: Store) -> None:
    await _failed(store, DEV, "a")
    await store.ledger.confirm("dev-1", ["a"])  # the edge has applied the failure
    done = operator_api.retry(store.intents, ["dev-1", "a"], "alice", NOW + 10)
    assert (done.intent.state, done.intent.attempt, done.intent.tries) == ("queued", 2, 0)
    assert done.to_json()["operator"] == "alice"
    # The device hears it (its node sends this on a signal, or on the next connect): accepted, attempt 2.
    [ack] = await store.ledger.unconfirmed("dev-1")
    assert (ack.id, ack.state, ack.attempt) == ("a", AckState.ACCEPTED, 2)
    # It runs again, with a new attempt (the provider's idempotency key device:intent:attempt changes).
    [entry] = await store.ledger.claim(["email.send"], 1, NOW + 11)
    assert (entry.intent_id, entry.attempt, entry.tries, entry.expires) == ("a", 2, 1, None)
    final = await store.ledger.finish(entry, EntryState.DELIVERED, "", "250", NOW + 12, "smtp")
    assert (final.state, final.attempt) == (AckState.DELIVERED, 2)
    assert [(a.state, a.attempt) for a in await store.ledger.unconfirmed("dev-1")] == [(AckState.DELIVERED, 2)]
    audit = [r for r in await store.ledger.audit("dev-1") if r.event is AuditEvent.REQUEUE]
    assert [(r.at, r.code, r.detail) for r in audit] == [(NOW + 10, "requeued", "retried by operator alice")]


async def test_a_retried_row_is_announced_until_its_edge_confirms_its_new_result(store: Store) -> None:
    await _failed(store, DEV, "a")
    operator_api.retry(store.intents, ["a"], "alice", NOW + 1)
    [entry] = await store.ledger.claim(["email.send"], 1, NOW + 2)
    assert [a.state for a in await store.ledger.unconfirmed("dev-1")] == [AckState.ACCEPTED]  # running: live
    await store.ledger.finish(entry, EntryState.FAILED, "smtp_550", "550 again", NOW + 3, "smtp")
    assert [(a.state, a.attempt) for a in await store.ledger.unconfirmed("dev-1")] == [(AckState.FAILED, 2)]
    await store.ledger.confirm("dev-1", ["a"])
    assert await store.ledger.unconfirmed("dev-1") == []
    # Re-admitted later by the edge's own retry (a higher attempt): live again, but no longer announced.
    envelope = Envelope("a", "hvac-ui", "email.send", int(NOW * 1000) - 5000, None, 3, {"to": "a@example.com"})
    [ack] = await admit(store.ledger, DEV, [envelope], allow, NOW + 4)
    assert (ack.state, ack.attempt) == (AckState.ACCEPTED, 3)
    assert await store.ledger.unconfirmed("dev-1") == []


async def test_an_expired_row_is_retried_without_its_old_deadline(store: Store) -> None:
    late = Envelope("late", "hvac-ui", "email.send", int(NOW * 1000) - 5000, int(NOW * 1000) - 1, 1, {"to": "a@b.c"})
    [ack] = await admit(store.ledger, DEV, [late], allow, NOW)
    assert ack.state is AckState.EXPIRED
    done = operator_api.retry(store.intents, ["late"], "alice", NOW + 1)
    assert (done.intent.state, done.intent.expires, done.intent.attempt) == ("queued", None, 2)
    [entry] = await store.ledger.claim(["email.send"], 1, NOW + 2)
    assert entry.intent_id == "late" and not entry.expired_at(NOW + 2)


async def test_cancel_ends_a_queued_row_and_the_device_hears_it(store: Store) -> None:
    await admit(store.ledger, DEV, [env("a")], allow, NOW)
    done = operator_api.cancel(store.intents, ["a"], "bob", NOW + 1)
    assert (done.intent.state, done.intent.code) == ("failed", "cancelled")
    assert await store.ledger.claim(["email.send"], 10, NOW + 2) == []
    [ack] = await store.ledger.unconfirmed("dev-1")
    assert (ack.state, ack.code, ack.detail) == (AckState.FAILED, "cancelled", "cancelled by operator bob")
    [record] = [r for r in await store.ledger.audit("dev-1") if r.event is AuditEvent.CANCEL]
    assert (record.at, record.detail) == (NOW + 1, "cancelled by operator bob")
    # A cancelled row is failed: an operator may retry it.
    assert operator_api.retry(store.intents, ["a"], "bob", NOW + 3).intent.state == "queued"


@pytest.mark.parametrize(
    ("last", "told"),
    [
        ("http_timeout", "its last try ended http_timeout: it may have reached the provider"),
        ("smtp_connection", "its last try ended smtp_connection: it may have reached the provider"),
        ("http_503", "its last try ended http_503"),
    ],
)
async def test_a_cancel_after_a_try_says_how_it_ended_and_whether_the_provider_may_have_it(
    store: Store, last: str, told: str
) -> None:
    """A row back in the queue after a try that had no answer (a timeout after the request went out) may
    have reached the provider: the cancel used to say only "cancelled" to the device and in the audit."""
    await admit(store.ledger, DEV, [env("a")], allow, NOW)
    [entry] = await store.ledger.claim(["email.send"], 1, NOW)
    await store.ledger.reschedule(entry, NOW + 60, last, "no answer", NOW)
    done = operator_api.cancel(store.intents, ["a"], "bob", NOW + 1)
    detail = f"cancelled by operator bob; {told}"
    assert (done.intent.code, done.intent.detail) == ("cancelled", detail)
    [ack] = await store.ledger.unconfirmed("dev-1")
    assert (ack.state, ack.code, ack.detail) == (AckState.FAILED, "cancelled", detail)
    [record] = [r for r in await store.ledger.audit("dev-1") if r.event is AuditEvent.CANCEL]
    assert record.detail == detail


async def test_what_the_table_does_not_allow_is_refused_and_changes_nothing(store: Store) -> None:
    await admit(store.ledger, DEV, [env("first"), env("second"), env("third")], allow, NOW)
    [done, running] = await store.ledger.claim(["email.send"], 2, NOW)  # the oldest two
    await store.ledger.finish(done, EntryState.DELIVERED, "", "", NOW, "smtp")
    delivered, live, queued = done.intent_id, running.intent_id, "third"
    before = operator_api.list_intents(store.intents, IntentQuery())
    cases = [
        (operator_api.cancel, delivered, "cannot cancel an intent that is delivered"),
        (operator_api.retry, delivered, "cannot requeue an intent that is delivered"),
        (operator_api.retry, queued, "cannot requeue an intent that is queued"),
        (operator_api.retry, live, "cannot requeue an intent that is running"),
    ]
    for fn, ident, message in cases:
        with pytest.raises(LedgerStateError, match=message):
            fn(store.intents, ["dev-1", ident], "alice", NOW + 1)
    with pytest.raises(UnknownIntentError):
        operator_api.cancel(store.intents, ["dev-1", "missing"], "alice", NOW + 1)
    with pytest.raises(BridgeError, match="operator"):
        operator_api.cancel(store.intents, ["dev-1", queued], "not a name", NOW + 1)
    assert operator_api.list_intents(store.intents, IntentQuery()) == before
    assert [r.event for r in operator_api.show_intent(store.intents, ["dev-1", queued]).history] == [AuditEvent.ACCEPT]
    assert not [r for r in await store.ledger.audit() if r.event in (AuditEvent.CANCEL, AuditEvent.REQUEUE)]


async def test_a_cancel_of_a_running_row_asks_its_node_and_says_so_when_it_does_not_answer(
    store_url: object, store: Store
) -> None:
    """The cancel of a running row is asked of the node holding it (cloud_bridge.cancel_asks), which is signalled;
    no node answers here, and the row runs on: its result is recorded as any other."""
    asked: list[str] = []
    heard = asyncio.Event()
    await store.signals.start(lambda _d: None, lambda: None, lambda device_id: (asked.append(device_id), heard.set()))
    try:
        await admit(store.ledger, DEV, [env("live")], allow, NOW)
        [running] = await store.ledger.claim(["email.send"], 1, NOW, owner="node-a")
        async with opened(store_url, node="cli") as cli:  # type: ignore[arg-type]
            with pytest.raises(BridgeError, match="node node-a holds it and has not answered in 0 s") as raised:
                operator_api.cancel(cli.intents, ["dev-1", "live"], "alice", NOW + 1, wait=0)
        assert raised.value.code == "cancel_pending"
        await asyncio.wait_for(heard.wait(), 30)
        assert asked == ["dev-1"]
        [row] = store.intents.find("live")
        assert (row.state, row.cancel_ask, row.code) == (EntryState.RUNNING, "1 alice", "")
        await store.ledger.finish(running, EntryState.DELIVERED, "", "", NOW + 2, "smtp")
        [row] = store.intents.find("live")
        assert row.state is EntryState.DELIVERED
        assert not [r for r in await store.ledger.audit() if r.event is AuditEvent.CANCEL]
    finally:
        await store.signals.stop()


async def test_retry_and_cancel_signal_the_running_nodes(store_url: object, store: Store) -> None:
    """The node that holds the device hears of the operation (from another process: here, another store)."""
    heard: list[str] = []
    woken = asyncio.Event()
    await store.signals.start(heard.append, woken.set)
    try:
        async with opened(store_url, node="cli") as cli:  # type: ignore[arg-type]
            await _failed(cli, DEV, "a")
            operator_api.retry(cli.intents, ["a"], "alice", NOW)
        await asyncio.wait_for(woken.wait(), 30)
        assert "dev-1" in heard
    finally:
        await store.signals.stop()


async def test_purge_deletes_only_old_confirmed_final_rows_and_old_audit(store: Store) -> None:
    await _failed(store, DEV, "old-confirmed", NOW - 40 * DAY)
    await _failed(store, DEV, "old-unconfirmed", NOW - 40 * DAY)
    await _failed(store, DEV, "new-confirmed", NOW - 1 * DAY)
    await admit(store.ledger, DEV, [env("old-queued")], allow, NOW - 40 * DAY)
    await store.ledger.confirm("dev-1", ["old-confirmed", "new-confirmed"])
    audit_before = len(await store.ledger.audit())
    done = operator_api.purge(store.intents, intents_age=30 * DAY, audit_age=35 * DAY, now=NOW, max_intent_age=30 * DAY)
    assert done.intents == 1
    left = {i.intent_id for i in operator_api.list_intents(store.intents, IntentQuery())}
    assert left == {"old-unconfirmed", "new-confirmed", "old-queued"}  # live and unconfirmed rows stay
    assert 0 < done.audit < audit_before
    assert all(r.at >= NOW - 35 * DAY for r in await store.ledger.audit())
    assert done.to_json()["intents_before"].startswith("2026-")
    with pytest.raises(ValueError, match="positive"):
        operator_api.purge(store.intents, intents_age=0, audit_age=None, now=NOW, max_intent_age=DAY)


async def test_purge_deletes_in_batches_until_nothing_is_left(store: Store) -> None:
    ids = [f"old-{n}" for n in range(7)]
    await admit(store.ledger, DEV, [env(i, created=NOW - 40 * DAY) for i in ids], allow, NOW - 40 * DAY)
    for entry in await store.ledger.claim(["email.send"], 10, NOW - 40 * DAY):
        await store.ledger.finish(entry, EntryState.DELIVERED, "", "", NOW - 40 * DAY, "smtp")
    await store.ledger.confirm("dev-1", ids)
    done = store.intents.purge(NOW - 30 * DAY, NOW - 30 * DAY, (NOW - 30 * DAY) * 1000, batch=3)
    assert (done.intents, done.audit) == (7, 14)  # accept and deliver of each
    assert operator_api.list_intents(store.intents, IntentQuery()) == []


async def test_a_purge_of_the_audit_alone_counts_audit_rows(store: Store) -> None:
    await _failed(store, DEV, "old", NOW - 40 * DAY)
    done = operator_api.purge(store.intents, intents_age=None, audit_age=35 * DAY, now=NOW, max_intent_age=DAY)
    assert (done.intents, done.audit) == (0, 2)  # accept and fail; the row itself stays


async def test_a_sqlite_purge_pauses_between_its_transactions_and_the_nodes_writer_gets_in(tmp_path: Path) -> None:
    """A purge from another connection holds SQLite's one write lock; back to back, its transactions kept the
    node's writer waiting in SQLite's busy handler (admission took up to 730 ms while 1,000,000 rows were
    purged, `python -m bench.purge_intake`). Between two transactions it now pauses, and the node admits."""
    async with opened(StoreUrl.sqlite(tmp_path / "store")) as store:
        assert store.intents.purge_pace is not None and store.intents.purge_pace.batch <= 1000
        ids = [f"old-{n}" for n in range(7)]
        await admit(store.ledger, DEV, [env(i, created=NOW - 40 * DAY) for i in ids], allow, NOW - 40 * DAY)
        for entry in await store.ledger.claim(["email.send"], 10, NOW - 40 * DAY):
            await store.ledger.finish(entry, EntryState.DELIVERED, "", "", NOW - 40 * DAY, "smtp")
        await store.ledger.confirm("dev-1", ids)
        loop = asyncio.get_running_loop()
        pauses: list[float] = []

        def pause(seconds: float) -> None:  # in the purge's thread, between two of its transactions
            new = env(f"new-{len(pauses)}")
            [ack] = asyncio.run_coroutine_threadsafe(admit(store.ledger, DEV, [new], allow, NOW), loop).result(10)
            assert ack.state is AckState.ACCEPTED
            pauses.append(seconds)

        store.intents.purge_pace = PurgePace(batch=3, pause=0.025, sleep=pause)
        done = await asyncio.to_thread(store.intents.purge, NOW - 30 * DAY, NOW - 30 * DAY, (NOW - 30 * DAY) * 1000)
        assert (done.intents, done.audit) == (7, 14)
        # After each full transaction: intents 3, 3 (then 1), audit 3, 3, 3, 3 (then 2).
        assert len(pauses) == 6 and min(pauses) >= 0.025
        left = {i.intent_id for i in operator_api.list_intents(store.intents, IntentQuery())}
        assert left == {f"new-{n}" for n in range(6)}


async def test_a_node_stopping_ends_its_paced_purge_after_the_transaction_under_way(tmp_path: Path) -> None:
    """A paced purge takes about 30 s per 1,000,000 rows, in the node's own threads, which the process waits
    for when it exits: Retention.stop ends it after the transaction under way."""
    async with opened(StoreUrl.sqlite(tmp_path / "store")) as store:
        ids = [f"old-{n}" for n in range(7)]
        await admit(store.ledger, DEV, [env(i, created=NOW - 40 * DAY) for i in ids], allow, NOW - 40 * DAY)
        for entry in await store.ledger.claim(["email.send"], 10, NOW - 40 * DAY):
            await store.ledger.finish(entry, EntryState.DELIVERED, "", "", NOW - 40 * DAY, "smtp")
        await store.ledger.confirm("dev-1", ids)
        paused, go_on = threading.Event(), threading.Event()

        def pause(_seconds: float) -> None:
            paused.set()
            assert go_on.wait(10)

        store.intents.purge_pace = PurgePace(batch=3, sleep=pause)
        retention = Retention(
            store.intents, intent_age=30 * DAY, audit_age=30 * DAY, max_intent_age=30 * DAY, clock=lambda: NOW
        )
        purging = asyncio.create_task(retention.run_once())
        await until(paused.is_set)
        await retention.stop()
        go_on.set()
        done = await purging
        assert (done.intents, done.audit) == (3, 0)
        assert len(operator_api.list_intents(store.intents, IntentQuery())) == 4


async def test_a_postgresql_purge_does_not_pause(pg_url: StoreUrl) -> None:
    """PostgreSQL has no one write lock: its purge goes at full speed, in transactions of PURGE_BATCH rows."""
    async with opened(pg_url) as store:
        assert store.intents.purge_pace is None


async def test_a_purge_that_waits_for_a_row_an_operator_retries_leaves_the_retried_row(pg_url: StoreUrl) -> None:
    """PostgreSQL: the purge's DELETE waits for the row lock of a retry in progress (held open here, in the
    retry's own transaction, after its UPDATE); once the retry commits, the row is queued and unconfirmed
    again, and the purge must pass it by (READ COMMITTED re-checks a waited-for row against the outer WHERE)."""
    async with opened(pg_url) as store:
        await _failed(store, DEV, "a", NOW - 40 * DAY)
        await store.ledger.confirm("dev-1", ["a"])  # old, final, confirmed: the purge's to delete
        updated, release = threading.Event(), threading.Event()
        notify = operator_signal("cli")

        def signal_then_hold(conn: Any, device_id: str) -> None:  # the retry's last statement, then its commit waits
            notify(conn, device_id)
            updated.set()
            release.wait(60)

        pools = PgPools(pg_url.conninfo(application_name="cli"))
        pools.open_sync()
        cli = SqlIntents(
            lambda: pools.sync_transaction("ledger"),
            signal=signal_then_hold,
            marker="%s",
            true="true",
            false="false",
            revoked=lambda _device_id: False,
        )
        try:
            retry = asyncio.ensure_future(asyncio.to_thread(operator_api.retry, cli, ["dev-1", "a"], "alice", NOW))
            await until(updated.is_set, what="the retry holding the row")
            purge = asyncio.ensure_future(
                asyncio.to_thread(store.intents.purge, NOW - 30 * DAY, None, (NOW - 30 * DAY) * 1000)
            )
            await until(lambda: waiting_for_a_lock(pg_url, "DELETE FROM intents"), what="the purge waiting for the row")
            release.set()
            retried, purged = await retry, await purge
        finally:
            release.set()
            pools.close_sync()
        assert (retried.intent.state, retried.intent.attempt) == ("queued", 2)
        assert purged.intents == 0
        [row] = store.intents.find("a", "dev-1")
        assert (row.state, row.attempt, row.confirmed) == (EntryState.QUEUED, 2, False)


async def test_the_running_nodes_retention_purges_with_the_configured_ages(store: Store) -> None:
    await _failed(store, DEV, "old", NOW - 10 * DAY)
    await store.ledger.confirm("dev-1", ["old"])
    await admit(store.ledger, DEV, [env("live", created=NOW - 10 * DAY)], allow, NOW - 10 * DAY)
    retention = Retention(
        store.intents, intent_age=5 * DAY, audit_age=20 * DAY, max_intent_age=7 * DAY, clock=lambda: NOW
    )
    done = await retention.run_once()
    assert (done.intents, done.audit) == (1, 0)
    assert [i.intent_id for i in operator_api.list_intents(store.intents, IntentQuery())] == ["live"]


class _MovedAfterUpdate(SqlIntents):
    """SqlIntents whose first operation UPDATE is followed, before the operation's next statement, by `move`
    committing from another connection (the executor's own call on the event loop `loop`)."""

    def __init__(self, pools: PgPools, loop: asyncio.AbstractEventLoop, move: Callable[[], Awaitable[object]]) -> None:
        super().__init__(
            lambda: pools.sync_transaction("ledger"), signal=operator_signal("cli"), marker="%s", true="true",
            false="false", revoked=lambda _device_id: False,
        )  # fmt: skip
        self.updates: list[int] = []
        self._loop, self._move = loop, move

    def run(self, conn: Any, text: str, params: Sequence[Any] = ()) -> Any:
        cursor = super().run(conn, text, params)
        if text.startswith("UPDATE intents SET state"):
            self.updates.append(cursor.rowcount)
            if len(self.updates) == 1:
                asyncio.run_coroutine_threadsafe(self._move(), self._loop).result(30)
        return cursor


@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_an_operation_on_a_row_that_moves_during_it_is_applied_to_the_moved_row(
    pg_url: StoreUrl, action: str
) -> None:
    """PostgreSQL (READ COMMITTED): the operation's UPDATE finds the row running and changes nothing; the
    executor then commits the row back to the queue (a transient error) or failed, before the operation's
    SELECT. The operation used to raise AssertionError (a 500 on the dashboard, a traceback at the CLI);
    it now applies to the row as it is."""
    async with opened(pg_url) as store:
        await admit(store.ledger, DEV, [env("a")], allow, NOW)
        [entry] = await store.ledger.claim(["email.send"], 1, NOW)

        async def move() -> object:
            if action == "cancel":
                return await store.ledger.reschedule(entry, NOW + 60, "timeout", "no answer", NOW)
            return await store.ledger.finish(entry, EntryState.FAILED, "smtp_refused", "550 no", NOW, "smtp")

        pools = PgPools(pg_url.conninfo(application_name="cli"))
        pools.open_sync()
        cli = _MovedAfterUpdate(pools, asyncio.get_running_loop(), move)
        try:
            fn = operator_api.cancel if action == "cancel" else operator_api.retry
            done = await asyncio.to_thread(fn, cli, ["dev-1", "a"], "alice", NOW + 1)
        finally:
            pools.close_sync()
        assert cli.updates == [0, 1]
        assert done.intent.state == ("failed" if action == "cancel" else "queued")
        events = [r.event for r in operator_api.show_intent(store.intents, ["dev-1", "a"]).history]
        assert events[-1] is (AuditEvent.CANCEL if action == "cancel" else AuditEvent.REQUEUE)
