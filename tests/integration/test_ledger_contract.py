"""The ledger contract, run against every store backend (tests/support/stores.py): admission, dedupe,
re-admission, expiry, id conflicts, too-old intents, limits, confirms, claims and leases, audit."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cloud_bridge import ledger_sqlite
from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import TransientError
from cloud_bridge.ledger import ClaimOffer, Ledger, LedgerEntry
from cloud_bridge.ledger_finish import Finish
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, judge, requests_for
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.ledger_states import EntryState, LedgerEvent
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.ratelimit import Limits, RateRule
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from tests.support.stores import admit, opened, store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")
OTHER = DeviceRef("dev-2", "acme", "boiler-8")


def env(
    ident: str, *, attempt: int = 1, expires: int | None = None, kind: str = "email.send", priority: int = 0
) -> Envelope:
    return Envelope(ident, "hvac-ui", kind, int(NOW * 1000) - 5000, expires, attempt, {"to": "a@example.com"}, priority)


class Decider:
    """A decide callback that records its calls and allows everything but ids starting with 'bad'."""

    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.overrides = overrides or {}
        self.limits = Limits()

    def __call__(self, envelope: Envelope) -> Decision:
        self.calls.append(envelope.id)
        if envelope.id.startswith("bad"):
            return Decision(False, "policy_recipient", "recipient domain not allowed")
        return Decision(True, overrides=self.overrides, limits=self.limits)


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return store.ledger


async def run_one(ledger: Ledger, state: EntryState, code: str = "", now: float = NOW) -> LedgerEntry:
    [entry] = await ledger.claim(["email.send"], 1, now)
    await ledger.finish(entry, state, code, "", now, "smtp")
    return entry


async def test_new_envelopes_are_accepted_and_queued(ledger: Ledger) -> None:
    decide = Decider({"from": "alerts@acme.example"})
    acks = await admit(ledger, DEV, [env("a"), env("b")], decide, NOW)
    assert [(a.id, a.state, a.at, a.app) for a in acks] == [
        ("a", AckState.ACCEPTED, int(NOW * 1000), "hvac-ui"),
        ("b", AckState.ACCEPTED, int(NOW * 1000), "hvac-ui"),
    ]
    assert decide.calls == ["a", "b"]
    entries = await ledger.claim(["email.send"], 10, NOW)
    assert [e.intent_id for e in entries] == ["a", "b"]
    assert entries[0].overrides == {"from": "alerts@acme.example"}
    assert entries[0].payload == {"to": "a@example.com"}
    assert entries[0].state is EntryState.RUNNING
    assert entries[0].tries == 1


async def test_a_batch_the_store_refuses_fails_only_its_own_admission(ledger: Ledger) -> None:
    """Batches that wait together are admitted together (one PostgreSQL transaction for a group): a value
    the store refuses in one device's batch fails that batch's admission, not the other devices' beside it
    (on PostgreSQL it failed the whole group, on every resend). The codec never lets such a value through
    (an attempt past the schema's bound here); the store must not depend on it alone."""
    bad = msgspec.structs.replace(env("x"), attempt=2**64 - 1)
    third = DeviceRef("dev-3", "acme", "boiler-9")
    results = await asyncio.gather(
        admit(ledger, OTHER, [env("o")], Decider(), NOW),
        admit(ledger, DEV, [bad], Decider(), NOW),
        admit(ledger, third, [env("t")], Decider(), NOW),
        return_exceptions=True,
    )
    assert isinstance(results[1], Exception), results[1]
    assert [[(a.id, a.state) for a in acks] for acks in (results[0], results[2])] == [
        [("o", AckState.ACCEPTED)],
        [("t", AckState.ACCEPTED)],
    ]
    assert sorted((e.device_id, e.intent_id) for e in await ledger.claim(["email.send"], 10, NOW)) == [
        ("dev-2", "o"),
        ("dev-3", "t"),
    ]


async def test_duplicates_are_acked_again_and_never_run_again(ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a")], decide, NOW)
    again = await admit(ledger, DEV, [env("a"), env("a")], decide, NOW + 1)
    assert [a.state for a in again] == [AckState.ACCEPTED, AckState.ACCEPTED]
    entry = await run_one(ledger, EntryState.DELIVERED)
    [final] = await admit(ledger, DEV, [env("a")], decide, NOW + 2)
    assert final.state is AckState.DELIVERED
    assert await ledger.claim(["email.send"], 10, NOW + 3) == []
    assert entry.intent_id == "a"


async def test_same_id_from_another_device_is_a_different_intent(ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a")], decide, NOW)
    await admit(ledger, OTHER, [env("a")], decide, NOW)
    assert decide.calls == ["a", "a"]
    assert len(await ledger.claim(["email.send"], 10, NOW)) == 2


async def test_duplicate_within_one_batch_is_stored_once(ledger: Ledger) -> None:
    decide = Decider()
    acks = await admit(ledger, DEV, [env("a"), env("a")], decide, NOW)
    assert [a.state for a in acks] == [AckState.ACCEPTED, AckState.ACCEPTED]


async def test_policy_rejection_is_final_and_kept(ledger: Ledger) -> None:
    decide = Decider()
    [ack] = await admit(ledger, DEV, [env("bad-1")], decide, NOW)
    assert (ack.state, ack.code, ack.detail) == (AckState.REJECTED, "policy_recipient", "recipient domain not allowed")
    assert await ledger.claim(["email.send"], 10, NOW) == []
    # Not even a higher attempt re-runs a rejected intent.
    [again] = await admit(ledger, DEV, [env("bad-1", attempt=2)], decide, NOW)
    assert again.state is AckState.REJECTED
    assert [a.id for a in await ledger.unconfirmed(DEV.device_id)] == ["bad-1"]


async def test_expired_on_arrival_is_stored_expired_without_deciding(ledger: Ledger) -> None:
    decide = Decider()
    acks = await admit(
        ledger, DEV, [env("old", expires=int(NOW * 1000)), env("new", expires=int(NOW * 1000) + 1)], decide, NOW
    )
    assert [(a.id, a.state, a.code) for a in acks] == [
        ("old", AckState.EXPIRED, "expired"),
        ("new", AckState.ACCEPTED, ""),
    ]
    assert decide.calls == ["new"]
    assert [e.intent_id for e in await ledger.claim(["email.send"], 10, NOW)] == ["new"]


@pytest.mark.parametrize("end", [EntryState.FAILED, EntryState.EXPIRED])
async def test_failed_or_expired_rows_rerun_only_with_a_higher_attempt(ledger: Ledger, end: EntryState) -> None:
    decide = Decider({"v": 1})
    await admit(ledger, DEV, [env("a")], decide, NOW)
    await run_one(ledger, end, "smtp_550")
    await ledger.confirm(DEV.device_id, ["a"])
    [same] = await admit(ledger, DEV, [env("a")], decide, NOW + 1)
    assert (same.state, same.code) == (AckState(str(end)), "smtp_550")
    decide.overrides = {"v": 2}
    [again] = await admit(ledger, DEV, [env("a", attempt=2)], decide, NOW + 2)
    assert again.state is AckState.ACCEPTED
    [entry] = await ledger.claim(["email.send"], 10, NOW + 2)
    assert (entry.attempt, entry.tries, entry.overrides, entry.confirmed) == (2, 1, {"v": 2}, False)
    [lower] = await admit(ledger, DEV, [env("a", attempt=1)], decide, NOW + 3)
    assert lower.state is AckState.ACCEPTED


async def test_large_batches_rerun_and_confirm_as_single_rows_do(ledger: Ledger) -> None:
    """A batch re-admitting 70 failed rows among 70 new and 70 delivered ones (SQLite writes its rows in
    statements of 64, 4 and 1, each row's rule applied on its own), then one confirm of 1,201 ids."""
    decide = Decider()
    old = [env(f"f{n:03d}") for n in range(70)] + [env(f"d{n:03d}") for n in range(70)]
    await admit(ledger, DEV, old, decide, NOW)
    for entry in await ledger.claim(["email.send"], 140, NOW):
        end = EntryState.FAILED if entry.intent_id.startswith("f") else EntryState.DELIVERED
        await ledger.finish(entry, end, "", "", NOW, "smtp")
    batch = [env(e.id, attempt=2) for e in old] + [env(f"n{n:03d}") for n in range(70)]
    acks = await admit(ledger, DEV, batch, decide, NOW + 1)
    states = {a.id: a.state for a in acks}
    assert {states[e.id] for e in batch if e.id[0] in "fn"} == {AckState.ACCEPTED}
    assert {states[e.id] for e in batch if e.id[0] == "d"} == {AckState.DELIVERED}
    claimed = await ledger.claim(["email.send"], 500, NOW + 1)
    assert sorted((e.intent_id, e.attempt) for e in claimed) == sorted(
        (e.id, e.attempt) for e in batch if e.id[0] in "fn"
    )
    refused = [env(f"bad{n:04d}") for n in range(1201)]
    await admit(ledger, DEV, refused, decide, NOW + 2)
    assert len(await ledger.unconfirmed(DEV.device_id)) >= 1201
    ids = [e.id for e in refused]
    assert await ledger.confirm(DEV.device_id, ids + ids[:10]) == 1201
    assert not {a.id for a in await ledger.unconfirmed(DEV.device_id)} & set(ids)


async def test_delivered_rows_never_rerun(ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a")], decide, NOW)
    await run_one(ledger, EntryState.DELIVERED)
    [ack] = await admit(ledger, DEV, [env("a", attempt=5)], decide, NOW + 1)
    assert ack.state is AckState.DELIVERED


async def test_unconfirmed_and_confirm(ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a"), env("b"), env("bad-c")], decide, NOW)
    assert [a.id for a in await ledger.unconfirmed(DEV.device_id)] == ["bad-c"]
    await run_one(ledger, EntryState.DELIVERED)
    pending = await ledger.unconfirmed(DEV.device_id)
    assert [(a.id, a.state) for a in pending] == [("a", AckState.DELIVERED), ("bad-c", AckState.REJECTED)]
    # Live, unknown and repeated ids are harmless.
    assert await ledger.confirm(DEV.device_id, ["a", "a", "b", "nope"]) == 1
    assert await ledger.confirm(DEV.device_id, ["a"]) == 0
    assert await ledger.confirm(OTHER.device_id, ["bad-c"]) == 0
    assert await ledger.confirm(DEV.device_id, []) == 0
    assert [a.id for a in await ledger.unconfirmed(DEV.device_id)] == ["bad-c"]
    assert await ledger.unconfirmed(OTHER.device_id) == []


async def test_claim_respects_kinds_due_time_priority_and_limit(ledger: Ledger) -> None:
    decide = Decider()
    await admit(
        ledger,
        DEV,
        [env("low"), env("high", priority=9), env("sms", kind="sms.send"), env("mid", priority=5)],
        decide,
        NOW,
    )
    assert [e.intent_id for e in await ledger.claim(["email.send"], 2, NOW)] == ["high", "mid"]
    [low] = await ledger.claim(["email.send"], 5, NOW)
    await ledger.reschedule(low, NOW + 30, "smtp_421", "try later", NOW)
    assert await ledger.claim(["email.send"], 5, NOW + 29) == []
    assert await ledger.next_due(["email.send"]) == NOW + 30
    [again] = await ledger.claim(["email.send"], 5, NOW + 30)
    assert (again.intent_id, again.tries, again.code) == ("low", 2, "smtp_421")
    assert await ledger.next_due(["email.send"]) is None
    assert [e.intent_id for e in await ledger.claim(["sms.send", "notify"], 5, NOW)] == ["sms"]
    assert await ledger.claim([], 5, NOW) == []


async def test_a_claim_of_more_than_500_rows_holds_each_of_them(ledger: Ledger) -> None:
    """A large claim (a pool of hundreds of slots claims twice its slots) takes every row it returns, in the
    store too: none is claimed again, and each finishes as held (SQLite updates them 500 to a statement)."""
    envelopes = [env(f"i{n:04d}") for n in range(1201)]
    for start in range(0, len(envelopes), 400):
        await admit(ledger, DEV, envelopes[start : start + 400], Decider(), NOW)
    claimed = await ledger.claim(["email.send"], 1201, NOW, owner="node-a")
    assert [e.intent_id for e in claimed] == [e.id for e in envelopes]
    assert {(e.state, e.tries, e.owner) for e in claimed} == {(EntryState.RUNNING, 1, "node-a")}
    assert await ledger.claim(["email.send"], 10, NOW + 1) == []
    assert (await ledger.depth()).counts == {("running", "email.send"): 1201}
    for entry in claimed[::240]:  # one in each chunk of 500, and the last
        ack = await ledger.finish(entry, EntryState.DELIVERED, "ok", "", NOW + 2, "smtp")
        assert ack.state is AckState.DELIVERED
    assert (await ledger.depth()).counts == {("running", "email.send"): 1201 - 6, ("delivered", "email.send"): 6}


async def test_an_admission_claims_its_new_rows_into_the_slots_offered(ledger: Ledger) -> None:
    """`admit_claiming`: the batch's new queued rows, up to the slots offered per kind, highest priority first,
    run for the offer's owner; everything else stays queued for `claim`. Every row is claimed once. (SQLite
    claims in the admitting transaction; PostgreSQL may claim none.)"""
    decide = Decider()
    await admit(ledger, DEV, [env("old"), env("dup")], decide, NOW)
    batch = [env("a"), env("b", priority=9), env("dup"), env("c"), env("s", kind="sms.send"), env("bad-x")]
    offer = ClaimOffer("node-a", 10, {"email.send": 2})
    acks, claimed = await ledger.admit_claiming(DEV, requests_for(batch, decide, NOW, DEFAULT_MAX_AGE), NOW, offer)
    assert [(a.id, a.state) for a in acks] == [(e.id, AckState.ACCEPTED) for e in batch[:5]] + [
        ("bad-x", AckState.REJECTED)
    ]
    if ledger.claims_at_admission:  # SQLite
        assert [e.intent_id for e in claimed] == ["b", "a"]
    else:  # PostgreSQL: its executors make no offers (an admission group holds many devices' batches)
        assert claimed == []
    assert len(claimed) <= 2 and {e.intent_id for e in claimed} <= {"a", "b", "c"}
    for entry in claimed:
        assert (entry.state, entry.owner, entry.lease_until, entry.tries) == (EntryState.RUNNING, "node-a", NOW + 10, 1)
    rest = await ledger.claim(["email.send", "sms.send"], 10, NOW, owner="node-b")
    ran = [e.intent_id for e in [*claimed, *rest]]
    assert sorted(ran) == ["a", "b", "c", "dup", "old", "s"]  # each once
    for entry in claimed:
        done = await ledger.finish(entry, EntryState.DELIVERED, "", "250 ok", NOW + 1, "smtp")
        assert done.state is AckState.DELIVERED


async def test_a_lapsed_lease_is_claimed_again_and_the_old_claim_cannot_finish(ledger: Ledger) -> None:
    await admit(ledger, DEV, [env("a"), env("b")], Decider(), NOW)
    [held] = await ledger.claim(["email.send"], 1, NOW, owner="node-a", lease=10)
    assert (held.intent_id, held.owner, held.lease_until) == ("a", "node-a", NOW + 10)
    # Within the lease nobody else gets it; renewing pushes the lease on.
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW + 9, owner="node-b")] == ["b"]
    assert await ledger.renew([held], NOW + 20) == 1
    assert await ledger.claim(["email.send"], 5, NOW + 15, owner="node-b") == []
    # node-a stops renewing (it died): after the lease, node-b takes the row over, same attempt.
    [again] = await ledger.claim(["email.send"], 5, NOW + 21, owner="node-b", lease=10)
    assert (again.intent_id, again.owner, again.tries, again.attempt) == ("a", "node-b", 2, 1)
    # The dead claim can neither finish, reschedule nor renew the row any more.
    stale = await ledger.finish(held, EntryState.DELIVERED, "", "late", NOW + 22, "smtp")
    assert stale.state is AckState.ACCEPTED
    await ledger.reschedule(held, NOW + 30, "x", "", NOW + 22)
    assert await ledger.renew([held], NOW + 99) == 0
    done = await ledger.finish(again, EntryState.DELIVERED, "", "250 ok", NOW + 23, "smtp")
    assert done.state is AckState.DELIVERED
    events = [(r.intent_id, r.event, r.code) for r in await ledger.audit(DEV.device_id)]
    assert events.count(("a", AuditEvent.RETRY, "lease_expired")) == 1
    assert events.count(("a", AuditEvent.DELIVER, "")) == 1


async def test_a_claim_due_by_an_earlier_time_takes_only_rows_due_or_lapsed_by_then(ledger: Ledger) -> None:
    """`due_by` (a node's look for rows of kinds it has no integration for, on a shared store): only rows
    due, or whose lease ran out, by then; the claim's lease still counts from `now`."""
    await admit(ledger, DEV, [env("a")], Decider(), NOW)
    await admit(ledger, DEV, [env("b")], Decider(), NOW + 50)
    [held] = await ledger.claim(["email.send"], 1, NOW, owner="node-a", lease=10)  # "a", lease to NOW + 10
    assert await ledger.claim(["email.send"], 5, NOW + 60, owner="node-b", due_by=NOW + 5) == []
    [lapsed] = await ledger.claim(["email.send"], 5, NOW + 60, owner="node-b", lease=10, due_by=NOW + 40)
    assert (lapsed.intent_id, lapsed.lease_until) == (held.intent_id, NOW + 70)
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW + 60, due_by=NOW + 50)] == ["b"]


async def test_recover_puts_rows_of_lapsed_leases_back(store_url: StoreUrl) -> None:
    async with opened(store_url) as first:
        await admit(first.ledger, DEV, [env("a"), env("b")], Decider(), NOW)
        await first.ledger.claim(["email.send"], 1, NOW, owner="node-a", lease=10)
    async with opened(store_url, node="node-b") as second:
        # After the lease every backend agrees the row is orphaned.
        assert await second.ledger.recover(NOW + 11) == 1
        assert await second.ledger.recover(NOW + 11) == 0
        entries = await second.ledger.claim(["email.send"], 5, NOW + 11)
        assert [(e.intent_id, e.tries) for e in entries] == [("a", 2), ("b", 1)]
        assert entries[0].code == "resumed"


async def test_sqlite_recover_takes_every_running_row_at_start(tmp_path: Path) -> None:
    """One process owns a SQLite ledger: at its start nothing else can be running anything."""
    path = tmp_path / "ledger.db"
    first = SqliteLedger(path)
    await first.open()
    await admit(first, DEV, [env("a")], Decider(), NOW)
    await first.claim(["email.send"], 1, NOW, lease=3600)
    await first.close()
    second = SqliteLedger(path)
    await second.open()
    try:
        assert await second.recover(NOW + 1) == 1
    finally:
        await second.close()


async def test_sqlite_finishes_that_share_a_failed_operation_each_get_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite records the finishes that wait together in one operation: when it fails, every caller gets the
    error (as from its own call), the rows stay running, and the next finishes are recorded. A caller that
    stops waiting still has its result recorded."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    try:
        await admit(ledger, DEV, [env("a"), env("b"), env("c")], Decider(), NOW)
        a, b, c = await ledger.claim(["email.send"], 3, NOW)
        real = ledger_sqlite.finish_rows

        def broken(conn: Any, finishes: list[Any]) -> Any:
            real(conn, finishes)  # written, then undone with the operation
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(ledger_sqlite, "finish_rows", broken)
        results = await asyncio.gather(
            *(ledger.finish(e, EntryState.DELIVERED, "", "", NOW, "smtp") for e in (a, b)), return_exceptions=True
        )
        assert [type(r) for r in results] == [TransientError, TransientError]
        assert (await ledger.depth()).counts == {("running", "email.send"): 3}
        monkeypatch.setattr(ledger_sqlite, "finish_rows", real)
        gave_up = asyncio.create_task(ledger.finish(c, EntryState.FAILED, "smtp_550", "", NOW, "smtp"))
        await asyncio.sleep(0)  # queued
        gave_up.cancel()
        acks = await asyncio.gather(*(ledger.finish(e, EntryState.DELIVERED, "", "", NOW, "smtp") for e in (a, b)))
        assert [(ack.id, ack.state) for ack in acks] == [("a", AckState.DELIVERED), ("b", AckState.DELIVERED)]
        assert (await ledger.depth()).counts == {("delivered", "email.send"): 2, ("failed", "email.send"): 1}
    finally:
        await ledger.close()


async def test_sqlite_finishes_recorded_together_each_match_their_holder(tmp_path: Path) -> None:
    """One operation records 302 finishes: each changes only the row it still holds, and a second finish of a
    row in the same operation finds it no longer held."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    try:
        await admit(ledger, DEV, [env(f"i{n:03d}") for n in range(301)], Decider(), NOW)
        entries = await ledger.claim(["email.send"], 301, NOW)
        stale = dataclasses.replace(entries[-1], tries=entries[-1].tries + 1)  # not how it is held
        first, *rest = entries[:-1]
        ends = [EntryState.DELIVERED if n % 3 else EntryState.FAILED for n in range(len(rest))]

        def finish(entry: LedgerEntry, end: EntryState, code: str = "") -> Finish:
            return Finish(entry, end, code, "", NOW + 1, "smtp", None)

        finishes = [finish(first, EntryState.DELIVERED), finish(first, EntryState.DELIVERED, "again")]
        finishes += [finish(stale, EntryState.DELIVERED)] + [finish(e, end) for e, end in zip(rest, ends, strict=True)]
        acks = await ledger._call(lambda conn: ledger_sqlite.finish_rows(conn, finishes))
        assert [(a.state, a.code) for a in acks[:3]] == [(AckState.DELIVERED, "")] * 2 + [(AckState.ACCEPTED, "")]
        assert [a.state for a in acks[3:]] == [AckState(str(end)) for end in ends]
        delivered = 1 + ends.count(EntryState.DELIVERED)
        assert (await ledger.depth()).counts == {
            ("delivered", "email.send"): delivered,
            ("failed", "email.send"): len(rest) + 1 - delivered,
            ("running", "email.send"): 1,
        }
        audit = [(r.intent_id, r.event) for r in await ledger.audit(DEV.device_id, limit=10_000)]
        assert audit.count((first.intent_id, AuditEvent.DELIVER)) == 1
    finally:
        await ledger.close()


async def test_a_retry_not_counted_gives_its_try_back_and_a_stale_claim_cannot(ledger: Ledger) -> None:
    """A provider's rate limit (provider_pause.py) is not the intent's try: the reschedule that records it takes
    the claim's try back in the same UPDATE, so the next claim is the same try again; a counted one keeps it."""
    await admit(ledger, DEV, [env("a")], Decider(), NOW)
    [first] = await ledger.claim(["email.send"], 1, NOW, owner="node-a", lease=10)
    await ledger.reschedule(first, NOW + 1, "http_429", "slow down", NOW, counted=False)
    [again] = await ledger.claim(["email.send"], 1, NOW + 1, owner="node-a", lease=10)
    assert (again.tries, again.code, again.detail) == (1, "http_429", "slow down")
    await ledger.reschedule(first, NOW + 2, "x", "", NOW + 1, counted=False)  # no longer held: nothing changes
    assert await ledger.renew([again], NOW + 20) == 1
    await ledger.reschedule(again, NOW + 2, "http_500", "", NOW + 1)
    [third] = await ledger.claim(["email.send"], 1, NOW + 2, owner="node-a", lease=10)
    assert third.tries == 2


async def test_finish_and_reschedule_ignore_rows_not_running(ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a")], decide, NOW)
    entry = await run_one(ledger, EntryState.DELIVERED)
    ack = await ledger.finish(entry, EntryState.FAILED, "late", "", NOW + 1, "smtp")
    assert ack.state is AckState.DELIVERED
    await ledger.reschedule(entry, NOW + 5, "late", "", NOW + 1)
    assert await ledger.next_due(["email.send"]) is None
    with pytest.raises(ValueError, match="final state"):
        await ledger.finish(entry, EntryState.QUEUED, "", "", NOW, "smtp")


async def test_audit_rows_follow_every_state_change(ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a"), env("bad-b"), env("c", expires=1)], decide, NOW)
    [entry] = await ledger.claim(["email.send"], 1, NOW)
    await ledger.reschedule(entry, NOW, "smtp_421", "busy", NOW + 1)
    [entry] = await ledger.claim(["email.send"], 1, NOW + 2)
    await ledger.finish(entry, EntryState.DELIVERED, "", "250 ok", NOW + 3, "smtp")
    await admit(ledger, OTHER, [env("z")], decide, NOW + 4)
    records = await ledger.audit(DEV.device_id)
    assert [(r.intent_id, r.event, r.code) for r in records] == [
        ("a", AuditEvent.ACCEPT, ""),
        ("bad-b", AuditEvent.REJECT, "policy_recipient"),
        ("c", AuditEvent.EXPIRE, "expired"),
        ("a", AuditEvent.RETRY, "smtp_421"),
        ("a", AuditEvent.DELIVER, ""),
    ]
    assert records[-1].integration == "smtp"
    assert records[0].tenant == "acme"
    assert [r.intent_id for r in await ledger.audit(since=NOW + 3)] == ["a", "z"]
    assert len(await ledger.audit(limit=2)) == 2
    assert records[-1].to_json()["at"] == "2027-01-15T08:00:03.000Z"


def limited(rate: RateRule | None = None, quota: int | None = None) -> Decider:
    decide = Decider()
    decide.limits = Limits(rate, quota)
    return decide


async def test_rate_limit_and_quota_are_spent_by_admissions_only(ledger: Ledger) -> None:
    decide = limited(RateRule(rate=1.0, burst=2), quota=4)
    acks = await admit(ledger, DEV, [env("a"), env("b"), env("c"), env("bad-d")], decide, NOW)
    assert [(a.id, a.state, a.code) for a in acks] == [
        ("a", AckState.ACCEPTED, ""),
        ("b", AckState.ACCEPTED, ""),
        ("c", AckState.REJECTED, "rate_limited"),
        ("bad-d", AckState.REJECTED, "policy_recipient"),
    ]
    # Duplicates spend nothing; a second later one token is back; then the quota of 4 runs out.
    acks = await admit(ledger, DEV, [env("a"), env("e"), env("f")], decide, NOW + 1)
    assert [(a.id, a.code) for a in acks] == [("a", ""), ("e", ""), ("f", "rate_limited")]
    acks = await admit(ledger, DEV, [env("g"), env("h")], decide, NOW + 10)
    assert [(a.id, a.state, a.code) for a in acks] == [
        ("g", AckState.ACCEPTED, ""),
        ("h", AckState.REJECTED, "quota_exceeded"),
    ]
    # Another device has its own bucket and quota; a new UTC day a new quota.
    [other] = await admit(ledger, OTHER, [env("a")], decide, NOW + 10)
    assert other.state is AckState.ACCEPTED
    next_day = (NOW // 86_400 + 1) * 86_400
    [i] = await admit(ledger, DEV, [env("i")], decide, next_day)
    assert i.state is AckState.ACCEPTED
    codes = [(r.intent_id, r.event, r.code) for r in await ledger.audit(DEV.device_id)]
    assert ("h", AuditEvent.REJECT, "quota_exceeded") in codes


async def test_limits_hold_across_nodes_of_one_store(store_url: StoreUrl) -> None:
    """Two bridge processes (nodes) on one store share a device's bucket and quota."""
    decide = limited(RateRule(rate=0.001, burst=3), quota=100)
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        results = await asyncio.gather(
            *(admit(node.ledger, DEV, [env(f"i{n}")], decide, NOW) for n, node in enumerate([a, b] * 4))
        )
    states = [acks[0].state for acks in results]
    assert states.count(AckState.ACCEPTED) == 3, states
    assert states.count(AckState.REJECTED) == 5


async def test_same_id_with_another_body_is_an_id_conflict(ledger: Ledger) -> None:
    decide = Decider()
    first = env("a")
    await admit(ledger, DEV, [first], decide, NOW)
    forged = Envelope("a", "hvac-ui", "email.send", first.created, None, 1, {"to": "evil@example.com"})
    [ack] = await admit(ledger, DEV, [forged], decide, NOW + 1)
    assert (ack.state, ack.code) == (AckState.REJECTED, "id_conflict")
    # Even dressed up as a retry (a higher attempt of a failed row) the other body is refused.
    [entry] = await ledger.claim(["email.send"], 1, NOW + 2)
    assert entry.payload == first.payload
    await ledger.finish(entry, EntryState.FAILED, "smtp_550", "", NOW + 3, "smtp")
    retry = Envelope("a", "hvac-ui", "email.send", first.created, None, 2, {"to": "evil@example.com"})
    [ack, same] = await admit(ledger, DEV, [retry, env("a")], decide, NOW + 4)
    assert (ack.state, ack.code) == (AckState.REJECTED, "id_conflict")
    assert (same.state, same.code) == (AckState.FAILED, "smtp_550")
    # The first body is untouched: same id, same body is a plain duplicate; its real retry runs.
    [dup] = await admit(ledger, DEV, [env("a")], decide, NOW + 5)
    assert (dup.state, dup.code) == (AckState.FAILED, "smtp_550")
    [rerun] = await admit(ledger, DEV, [env("a", attempt=2)], decide, NOW + 6)
    assert rerun.state is AckState.ACCEPTED
    [entry] = await ledger.claim(["email.send"], 1, NOW + 6)
    assert (entry.payload, entry.attempt) == (first.payload, 2)
    events = [(r.event, r.code) for r in await ledger.audit(DEV.device_id)]
    assert events.count((AuditEvent.REJECT, "id_conflict")) == 2


async def test_intents_older_than_the_maximum_age_are_refused(ledger: Ledger) -> None:
    decide = Decider()
    epoch = Envelope("old", "hvac-ui", "email.send", 0, None, 1, {"to": "a@example.com"})
    young = Envelope("young", "hvac-ui", "email.send", int((NOW - 86_400) * 1000), None, 1, {"to": "a@example.com"})
    acks = await admit(ledger, DEV, [epoch, young], decide, NOW, max_age=7 * 86_400)
    assert [(a.id, a.state, a.code) for a in acks] == [
        ("old", AckState.REJECTED, "too_old"),
        ("young", AckState.ACCEPTED, ""),
    ]
    assert decide.calls == ["young"]
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW)] == ["young"]


async def test_purge_deletes_only_confirmed_final_rows(store: Store, ledger: Ledger) -> None:
    decide = Decider()
    await admit(ledger, DEV, [env("a"), env("b"), env("bad-c")], decide, NOW)
    await run_one(ledger, EntryState.DELIVERED)
    await ledger.confirm(DEV.device_id, ["a", "b", "bad-c"])
    created_before = (NOW + 1) * 1000  # every row is past the age a copy would be admitted at
    assert store.intents.purge(NOW, None, created_before, batch=1).intents == 0
    assert store.intents.purge(NOW + 1, None, created_before, batch=1).intents == 2  # a row per transaction
    assert await ledger.unconfirmed(DEV.device_id) == []
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW)] == ["b"]
    # The audit trail outlives purged rows.
    assert len(await ledger.audit(DEV.device_id)) == 4


async def test_a_failing_decide_undoes_only_its_own_call(ledger: Ledger) -> None:
    def broken(envelope: Envelope) -> Decision:
        if envelope.id == "boom":
            raise RuntimeError("policy bug")
        return Decision(True)

    results = await asyncio.gather(
        admit(ledger, DEV, [env("x"), env("boom")], broken, NOW),
        admit(ledger, OTHER, [env("y")], broken, NOW),
        return_exceptions=True,
    )
    assert isinstance(results[0], RuntimeError)
    assert [a.state for a in results[1]] == [AckState.ACCEPTED]  # type: ignore[union-attr]
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW)] == ["y"]


async def test_details_are_clipped_to_the_ack_limit(ledger: Ledger) -> None:
    def long(envelope: Envelope) -> Decision:
        return Decision(False, "policy_recipient", "x" * 5000)

    [ack] = await admit(ledger, DEV, [env("a")], long, NOW)
    assert len(ack.detail) == 1000
    assert ack.detail.endswith("...")


async def test_sqlite_concurrent_admits_share_commits(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    decide = Decider()
    before = ledger.commits
    calls = [admit(ledger, DEV, [env(f"i{n}-{k}") for k in range(5)], decide, NOW) for n in range(200)]
    results = await asyncio.gather(*calls)
    assert all(a.state is AckState.ACCEPTED for acks in results for a in acks)
    commits = ledger.commits - before
    assert 1 <= commits <= 20, commits
    assert len(await ledger.audit(limit=2000)) == 1000
    await ledger.close()


async def test_sqlite_calls_need_an_open_ledger_and_open_errors_are_bridge_errors(tmp_path: Path) -> None:
    store = SqliteLedger(tmp_path / "ledger.db")
    with pytest.raises(RuntimeError, match="not open"):
        await store.unconfirmed("dev-1")
    broken = SqliteLedger(tmp_path / "missing-dir" / "ledger.db")
    with pytest.raises(TransientError) as info:
        await broken.open()
    assert info.value.code == "ledger_error"
    await store.open()
    with pytest.raises(RuntimeError, match="already open"):
        await store.open()
    await store.close()
    await store.close()


async def test_sqlite_depth_is_read_beside_the_writer_not_in_its_queue(tmp_path: Path) -> None:
    """A metrics scrape reads every row not done with: the writer's commits must not wait for it."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    with pytest.raises(RuntimeError, match="not open"):
        await ledger.depth()
    await ledger.open()
    await admit(ledger, DEV, [env("a"), env("b")], Decider(), NOW)
    inside, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # an operation that keeps the writer busy until released
        conn.execute("UPDATE intents SET detail = 'held' WHERE intent_id = 'a'")
        inside.set()
        release.wait(30)

    held = asyncio.ensure_future(ledger._call(hold))
    try:
        await asyncio.to_thread(inside.wait, 30)
        depth = await asyncio.wait_for(ledger.depth(), 10)  # through the writer: stuck behind `hold`
        assert depth.counts == {("queued", "email.send"): 2}
        assert depth.oldest_queued == NOW
    finally:
        release.set()
        await held
    await ledger.close()


def test_judging_is_pure_and_skips_policy_for_expired_intents() -> None:
    decide = Decider({"from": "x@acme.example"})
    expired = judge(env("a", expires=int(NOW * 1000)), decide, NOW, DEFAULT_MAX_AGE)
    assert (expired.event, expired.code) == (LedgerEvent.EXPIRE, "expired")
    assert decide.calls == []
    queued = judge(env("a"), decide, NOW, DEFAULT_MAX_AGE)
    assert (queued.event, dict(queued.overrides)) == (LedgerEvent.QUEUE, {"from": "x@acme.example"})
    refused = judge(env("bad"), decide, NOW, DEFAULT_MAX_AGE)
    assert (refused.event, refused.code) == (LedgerEvent.REJECT, "policy_recipient")


async def test_depth_counts_what_is_not_done_with_per_state_and_kind(ledger: Ledger) -> None:
    await ledger.ping()
    empty = await ledger.depth()
    assert (empty.counts, empty.oldest_queued, empty.oldest_queued_age(NOW)) == ({}, None, 0.0)
    decide = Decider()
    await admit(ledger, DEV, [env("a"), env("b"), env("c"), env("bad-d"), env("s", kind="sms.send")], decide, NOW)
    await admit(ledger, OTHER, [env("late")], decide, NOW + 60)
    await ledger.claim(["email.send"], 1, NOW + 60)  # one running
    [second] = await ledger.claim(["email.send"], 1, NOW + 60)
    await ledger.finish(second, EntryState.DELIVERED, "", "", NOW + 60, "smtp")
    depth = await ledger.depth()
    assert depth.counts == {
        ("queued", "email.send"): 2,
        ("queued", "sms.send"): 1,
        ("running", "email.send"): 1,
        ("delivered", "email.send"): 1,
        ("rejected", "email.send"): 1,
    }
    assert depth.oldest_queued == NOW
    assert depth.oldest_queued_age(NOW + 100) == 100
    # A confirmed result is history: no longer counted.
    await ledger.confirm(DEV.device_id, [second.intent_id, "bad-d"])
    assert ("delivered", "email.send") not in (await ledger.depth()).counts
