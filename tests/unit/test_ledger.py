"""SqliteLedger on a temporary file: admission, dedupe, re-admission, expiry, confirms, claims, audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import TransientError
from cloud_bridge.ledger import EntryState, LedgerEntry, admission, is_duplicate
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import AckState, Envelope

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

    def __call__(self, envelope: Envelope) -> Decision:
        self.calls.append(envelope.id)
        if envelope.id.startswith("bad"):
            return Decision(False, "policy_recipient", "recipient domain not allowed")
        return Decision(True, overrides=self.overrides)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    store = SqliteLedger(tmp_path / "ledger.db")
    await store.open()
    yield store
    await store.close()


async def run_one(ledger: SqliteLedger, state: EntryState, code: str = "", now: float = NOW) -> LedgerEntry:
    [entry] = await ledger.claim(["email.send"], 1, now)
    await ledger.finish(entry, state, code, "", now, "smtp")
    return entry


async def test_new_envelopes_are_accepted_and_queued(ledger: SqliteLedger) -> None:
    decide = Decider({"from": "alerts@acme.example"})
    acks = await ledger.admit(DEV, [env("a"), env("b")], decide, NOW)
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


async def test_duplicates_are_acked_again_without_deciding(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a")], decide, NOW)
    again = await ledger.admit(DEV, [env("a"), env("a")], decide, NOW + 1)
    assert [a.state for a in again] == [AckState.ACCEPTED, AckState.ACCEPTED]
    assert decide.calls == ["a"]
    entry = await run_one(ledger, EntryState.DELIVERED)
    [final] = await ledger.admit(DEV, [env("a")], decide, NOW + 2)
    assert final.state is AckState.DELIVERED
    assert decide.calls == ["a"]
    assert await ledger.claim(["email.send"], 10, NOW + 3) == []
    assert entry.intent_id == "a"


async def test_same_id_from_another_device_is_a_different_intent(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a")], decide, NOW)
    await ledger.admit(OTHER, [env("a")], decide, NOW)
    assert decide.calls == ["a", "a"]
    assert len(await ledger.claim(["email.send"], 10, NOW)) == 2


async def test_duplicate_within_one_batch_is_decided_once(ledger: SqliteLedger) -> None:
    decide = Decider()
    acks = await ledger.admit(DEV, [env("a"), env("a")], decide, NOW)
    assert [a.state for a in acks] == [AckState.ACCEPTED, AckState.ACCEPTED]
    assert decide.calls == ["a"]


async def test_policy_rejection_is_final_and_kept(ledger: SqliteLedger) -> None:
    decide = Decider()
    [ack] = await ledger.admit(DEV, [env("bad-1")], decide, NOW)
    assert (ack.state, ack.code, ack.detail) == (AckState.REJECTED, "policy_recipient", "recipient domain not allowed")
    assert await ledger.claim(["email.send"], 10, NOW) == []
    # Not even a higher attempt re-runs a rejected intent.
    [again] = await ledger.admit(DEV, [env("bad-1", attempt=2)], decide, NOW)
    assert again.state is AckState.REJECTED
    assert decide.calls == ["bad-1"]
    assert [a.id for a in await ledger.unconfirmed(DEV.device_id)] == ["bad-1"]


async def test_expired_on_arrival_is_stored_expired_without_deciding(ledger: SqliteLedger) -> None:
    decide = Decider()
    acks = await ledger.admit(
        DEV, [env("old", expires=int(NOW * 1000)), env("new", expires=int(NOW * 1000) + 1)], decide, NOW
    )
    assert [(a.id, a.state, a.code) for a in acks] == [
        ("old", AckState.EXPIRED, "expired"),
        ("new", AckState.ACCEPTED, ""),
    ]
    assert decide.calls == ["new"]
    assert [e.intent_id for e in await ledger.claim(["email.send"], 10, NOW)] == ["new"]


@pytest.mark.parametrize("end", [EntryState.FAILED, EntryState.EXPIRED])
async def test_failed_or_expired_rows_rerun_only_with_a_higher_attempt(ledger: SqliteLedger, end: EntryState) -> None:
    decide = Decider({"v": 1})
    await ledger.admit(DEV, [env("a")], decide, NOW)
    await run_one(ledger, end, "smtp_550")
    await ledger.confirm(DEV.device_id, ["a"])
    [same] = await ledger.admit(DEV, [env("a")], decide, NOW + 1)
    assert (same.state, same.code) == (AckState(str(end)), "smtp_550")
    decide.overrides = {"v": 2}
    [again] = await ledger.admit(DEV, [env("a", attempt=2)], decide, NOW + 2)
    assert again.state is AckState.ACCEPTED
    assert decide.calls == ["a", "a"]
    [entry] = await ledger.claim(["email.send"], 10, NOW + 2)
    assert (entry.attempt, entry.tries, entry.overrides, entry.confirmed) == (2, 1, {"v": 2}, False)
    [lower] = await ledger.admit(DEV, [env("a", attempt=1)], decide, NOW + 3)
    assert lower.state is AckState.ACCEPTED


async def test_delivered_rows_never_rerun(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a")], decide, NOW)
    await run_one(ledger, EntryState.DELIVERED)
    [ack] = await ledger.admit(DEV, [env("a", attempt=5)], decide, NOW + 1)
    assert ack.state is AckState.DELIVERED
    assert decide.calls == ["a"]


async def test_unconfirmed_and_confirm(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a"), env("b"), env("bad-c")], decide, NOW)
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


async def test_claim_respects_kinds_due_time_priority_and_limit(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(
        DEV, [env("low"), env("high", priority=9), env("sms", kind="sms.send"), env("mid", priority=5)], decide, NOW
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


async def test_recover_puts_running_rows_back(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    first = SqliteLedger(path)
    await first.open()
    await first.admit(DEV, [env("a"), env("b")], Decider(), NOW)
    await first.claim(["email.send"], 1, NOW)
    await first.close()
    second = SqliteLedger(path)
    await second.open()
    try:
        assert await second.recover(NOW + 10) == 1
        assert await second.recover(NOW + 10) == 0
        entries = await second.claim(["email.send"], 5, NOW + 10)
        assert [(e.intent_id, e.tries) for e in entries] == [("a", 2), ("b", 1)]
        assert entries[0].code == "resumed"
    finally:
        await second.close()


async def test_finish_and_reschedule_ignore_rows_not_running(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a")], decide, NOW)
    entry = await run_one(ledger, EntryState.DELIVERED)
    ack = await ledger.finish(entry, EntryState.FAILED, "late", "", NOW + 1, "smtp")
    assert ack.state is AckState.DELIVERED
    await ledger.reschedule(entry, NOW + 5, "late", "", NOW + 1)
    assert await ledger.next_due(["email.send"]) is None
    with pytest.raises(ValueError, match="final state"):
        await ledger.finish(entry, EntryState.QUEUED, "", "", NOW, "smtp")


async def test_audit_rows_follow_every_state_change(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a"), env("bad-b"), env("c", expires=1)], decide, NOW)
    [entry] = await ledger.claim(["email.send"], 1, NOW)
    await ledger.reschedule(entry, NOW, "smtp_421", "busy", NOW + 1)
    [entry] = await ledger.claim(["email.send"], 1, NOW + 2)
    await ledger.finish(entry, EntryState.DELIVERED, "", "250 ok", NOW + 3, "smtp")
    await ledger.admit(OTHER, [env("z")], decide, NOW + 4)
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


async def test_usage_since_counts_admitted_intents(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a"), env("b"), env("bad-c"), env("d", expires=1)], decide, NOW)
    await ledger.admit(DEV, [env("s", kind="sms.send"), env("a")], decide, NOW + 10)
    await ledger.admit(OTHER, [env("a")], decide, NOW + 20)
    assert await ledger.usage_since(NOW) == {
        ("dev-1", "email.send"): 2,
        ("dev-1", "sms.send"): 1,
        ("dev-2", "email.send"): 1,
    }
    assert await ledger.usage_since(NOW + 5) == {("dev-1", "sms.send"): 1, ("dev-2", "email.send"): 1}


async def test_purge_deletes_only_confirmed_final_rows(ledger: SqliteLedger) -> None:
    decide = Decider()
    await ledger.admit(DEV, [env("a"), env("b"), env("bad-c")], decide, NOW)
    await run_one(ledger, EntryState.DELIVERED)
    await ledger.confirm(DEV.device_id, ["a", "b", "bad-c"])
    assert await ledger.purge(NOW) == 0
    assert await ledger.purge(NOW + 1) == 2
    assert await ledger.unconfirmed(DEV.device_id) == []
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW)] == ["b"]
    # The audit trail outlives purged rows.
    assert len(await ledger.audit(DEV.device_id)) == 4


async def test_a_failing_decide_undoes_only_its_own_call(ledger: SqliteLedger) -> None:
    def broken(envelope: Envelope) -> Decision:
        if envelope.id == "boom":
            raise RuntimeError("policy bug")
        return Decision(True)

    results = await asyncio.gather(
        ledger.admit(DEV, [env("x"), env("boom")], broken, NOW),
        ledger.admit(OTHER, [env("y")], broken, NOW),
        return_exceptions=True,
    )
    assert isinstance(results[0], RuntimeError)
    assert [a.state for a in results[1]] == [AckState.ACCEPTED]  # type: ignore[union-attr]
    assert [e.intent_id for e in await ledger.claim(["email.send"], 5, NOW)] == ["y"]


async def test_concurrent_admits_share_commits(ledger: SqliteLedger) -> None:
    decide = Decider()
    before = ledger.commits
    calls = [ledger.admit(DEV, [env(f"i{n}-{k}") for k in range(5)], decide, NOW) for n in range(200)]
    results = await asyncio.gather(*calls)
    assert all(a.state is AckState.ACCEPTED for acks in results for a in acks)
    commits = ledger.commits - before
    assert 1 <= commits <= 20, commits
    assert len(await ledger.usage_since(0)) == 1
    assert (await ledger.usage_since(0))[("dev-1", "email.send")] == 1000


async def test_details_are_clipped_to_the_ack_limit(ledger: SqliteLedger) -> None:
    def long(envelope: Envelope) -> Decision:
        return Decision(False, "policy_recipient", "x" * 5000)

    [ack] = await ledger.admit(DEV, [env("a")], long, NOW)
    assert len(ack.detail) == 1000
    assert ack.detail.endswith("...")


async def test_calls_need_an_open_ledger_and_open_errors_are_bridge_errors(tmp_path: Path) -> None:
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


def test_duplicate_rule_and_admission_are_pure() -> None:
    assert is_duplicate(EntryState.QUEUED, 1, 2)
    assert is_duplicate(EntryState.DELIVERED, 1, 9)
    assert is_duplicate(EntryState.REJECTED, 1, 2)
    assert is_duplicate(EntryState.FAILED, 2, 2)
    assert not is_duplicate(EntryState.FAILED, 1, 2)
    assert not is_duplicate(EntryState.EXPIRED, 1, 2)
    decide = Decider({"from": "x@acme.example"})
    assert admission(env("a", expires=int(NOW * 1000)), decide, NOW)[:2] == (EntryState.EXPIRED, "expired")
    assert decide.calls == []
    assert admission(env("a"), decide, NOW) == (EntryState.QUEUED, "", "", {"from": "x@acme.example"})
    assert admission(env("bad"), decide, NOW)[:2] == (EntryState.REJECTED, "policy_recipient")
