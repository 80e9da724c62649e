"""The usage rollup, run against every store backend: counted in the transactions that end intents (admission
refusals, results, noted refusals), grouped and filtered, with provider times, and kept across the purge."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from cloud_bridge.audit import AuditEvent, AuditRecord
from cloud_bridge.ledger import Ledger
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreKind, StoreUrl
from cloud_bridge.usage import DAY_S, Dimension, UsageQuery, day_of
from intent_contract.codec import Envelope
from tests.support.stores import admit, opened, store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
TODAY, TOMORROW = day_of(NOW), day_of(NOW + DAY_S)
DEV = DeviceRef("dev-1", "acme", "boiler-7")
OTHER = DeviceRef("dev-2", "globex", "pump-1")


def env(ident: str, *, kind: str = "email.send", expires: int | None = None) -> Envelope:
    return Envelope(ident, "hvac-ui", kind, int(NOW * 1000) - 5000, expires, 1, {"to": "a@example.com"})


def decide(envelope: Envelope) -> Decision:
    if envelope.id.startswith("bad"):
        return Decision(False, "policy_recipient", "recipient domain not allowed")
    return Decision(True)


@pytest.fixture
def ledger(store: Store) -> Ledger:
    return store.ledger


async def finish_all(ledger: Ledger, outcomes: dict[str, tuple[EntryState, float | None]], now: float) -> None:
    for entry in await ledger.claim(["email.send", "sms.send"], 100, now):
        state, seconds = outcomes[entry.intent_id]
        await ledger.finish(entry, state, "x" if state is not EntryState.DELIVERED else "", "", now, "t",
                            seconds=seconds)  # fmt: skip


async def test_results_and_refusals_are_counted_per_day_with_provider_times(ledger: Ledger) -> None:
    expired = int(NOW * 1000) - 1
    await admit(ledger, DEV, [env("a"), env("b"), env("c"), env("bad-1"), env("old", expires=expired)], decide, NOW)
    await finish_all(
        ledger,
        {"a": (EntryState.DELIVERED, 0.020), "b": (EntryState.DELIVERED, 0.040), "c": (EntryState.FAILED, 3.0)},
        NOW,
    )
    await admit(ledger, DEV, [env("d", kind="sms.send")], decide, NOW + DAY_S)
    await finish_all(ledger, {"d": (EntryState.DELIVERED, None)}, NOW + DAY_S)

    rows = await ledger.usage(UsageQuery(TODAY, TOMORROW))
    assert [(r.day, r.count, r.failures, r.delivered, r.failed, r.expired, r.rejected) for r in rows] == [
        (TODAY, 5, 3, 2, 1, 1, 1),
        (TOMORROW, 1, 0, 1, 0, 0, 0),
    ]
    first = rows[0]
    assert first.mean_ms == pytest.approx((20 + 40 + 3000) / 3)
    assert first.max_ms == pytest.approx(3000)
    assert first.p50_ms == 50  # the bucket holding the median: (25, 50] ms
    assert first.p95_ms == pytest.approx(3000)  # the slowest bucket, capped by the maximum
    assert rows[1].mean_ms is None and rows[1].to_json()["provider_ms"]["max"] is None


async def test_jobs_that_end_together_are_each_recorded_answered_and_counted(ledger: Ledger) -> None:
    """Finishes awaited concurrently, as a drain's jobs end (SQLite records them in one operation): each caller
    gets the ack of its own row, a claim no longer held changes nothing among them, and usage and the audit
    count every one that ended."""
    await admit(ledger, DEV, [env(f"a{n}") for n in range(6)] + [env("s", kind="sms.send")], decide, NOW)
    await admit(ledger, OTHER, [env("o")], decide, NOW)
    entries = {e.intent_id: e for e in await ledger.claim(["email.send", "sms.send"], 100, NOW)}
    outcomes = {"a0": EntryState.DELIVERED, "a1": EntryState.FAILED, "a2": EntryState.DELIVERED,
                "a3": EntryState.EXPIRED, "a4": EntryState.DELIVERED, "s": EntryState.DELIVERED,
                "o": EntryState.FAILED}  # fmt: skip
    stale = replace(entries["a5"], tries=entries["a5"].tries + 1)  # a claim that is not the row's holder
    acks = await asyncio.gather(
        *(ledger.finish(entries[i], state, f"code-{i}", f"detail {i}", NOW + 1, "t", seconds=0.03)
          for i, state in outcomes.items()),
        ledger.finish(stale, EntryState.DELIVERED, "never", "", NOW + 1, "t"),
    )  # fmt: skip
    assert [(a.id, str(a.state), a.code, a.detail) for a in acks] == [
        *((i, str(state), f"code-{i}", f"detail {i}") for i, state in outcomes.items()),
        ("a5", "accepted", "", ""),  # still running under its real claim: nothing changed
    ]
    rows = await ledger.usage(UsageQuery(TODAY, TODAY, group=(Dimension.DEVICE, Dimension.KIND)))
    assert [(r.device_id, r.kind, r.count, r.delivered, r.failed, r.expired) for r in rows] == [
        ("dev-1", "email.send", 5, 3, 1, 1),
        ("dev-1", "sms.send", 1, 1, 0, 0),
        ("dev-2", "email.send", 1, 0, 1, 0),
    ]
    audited = [(r.intent_id, r.event, r.code) for r in await ledger.audit() if r.event is not AuditEvent.ACCEPT]
    events = {EntryState.DELIVERED: AuditEvent.DELIVER, EntryState.FAILED: AuditEvent.FAIL,
              EntryState.EXPIRED: AuditEvent.EXPIRE}  # fmt: skip
    assert sorted(audited) == sorted((i, events[state], f"code-{i}") for i, state in outcomes.items())
    [lapsed] = await ledger.claim(["email.send"], 10, NOW + 10_000)  # a5 alone, once its lease lapses
    assert lapsed.intent_id == "a5"


async def test_usage_groups_and_filters_by_tenant_device_kind_and_days(ledger: Ledger) -> None:
    await admit(ledger, DEV, [env("a"), env("b", kind="sms.send")], decide, NOW)
    await admit(ledger, OTHER, [env("c"), env("bad-d")], decide, NOW)
    await finish_all(
        ledger,
        dict.fromkeys(("a", "b", "c"), (EntryState.DELIVERED, 0.1)),
        NOW,
    )
    by_device = await ledger.usage(UsageQuery(TODAY, TODAY, group=(Dimension.DEVICE,)))
    assert [(r.tenant, r.device_id, r.count, r.failures) for r in by_device] == [
        ("acme", "dev-1", 2, 0),
        ("globex", "dev-2", 2, 1),
    ]
    by_kind = await ledger.usage(UsageQuery(TODAY, TODAY, tenant="acme", group=(Dimension.KIND,)))
    assert [(r.kind, r.count) for r in by_kind] == [("email.send", 1), ("sms.send", 1)]
    one = await ledger.usage(UsageQuery(TODAY, TODAY, device_id="dev-2", kind="email.send"))
    assert [(r.day, r.count, r.rejected) for r in one] == [(TODAY, 2, 1)]
    assert await ledger.usage(UsageQuery(TOMORROW, TOMORROW)) == []
    wide = await ledger.usage(UsageQuery(TODAY, TODAY, group=(Dimension.DAY, Dimension.TENANT, Dimension.KIND)))
    assert [(r.day, r.tenant, r.kind, r.count) for r in wide] == [
        (TODAY, "acme", "email.send", 1),
        (TODAY, "acme", "sms.send", 1),
        (TODAY, "globex", "email.send", 2),
    ]


async def test_usage_outlives_the_purge_of_the_rows_it_counts(store: Store, ledger: Ledger) -> None:
    await admit(ledger, DEV, [env("a"), env("bad-b")], decide, NOW)
    await finish_all(ledger, {"a": (EntryState.DELIVERED, 0.5)}, NOW)
    await ledger.confirm(DEV.device_id, ["a", "bad-b"])
    assert store.intents.purge(NOW + 1, None, (NOW + 1) * 1000).intents == 2
    [row] = await ledger.usage(UsageQuery(TODAY, TODAY))
    assert (row.count, row.failures, row.max_ms) == (2, 1, pytest.approx(500))


async def test_noted_refusals_are_audited_with_their_tenant_and_counted(ledger: Ledger) -> None:
    await ledger.note(
        [
            AuditRecord(NOW, "dev-2", "globex", "i-1", "email.send", AuditEvent.REJECT, code="schema_invalid"),
            AuditRecord(NOW, "dev-2", "globex", "", "", AuditEvent.REFUSE, code="token_invalid"),
        ]
    )
    await admit(ledger, DEV, [env("bad-1")], decide, NOW)
    records = await ledger.audit(tenant="globex")
    assert [(r.device_id, r.intent_id, r.event, r.code) for r in records] == [
        ("dev-2", "i-1", AuditEvent.REJECT, "schema_invalid"),
        ("dev-2", "", AuditEvent.REFUSE, "token_invalid"),
    ]
    assert [r.intent_id for r in await ledger.audit(tenant="acme")] == ["bad-1"]
    rows = await ledger.usage(UsageQuery(TODAY, TODAY, group=(Dimension.TENANT,)))
    assert [(r.tenant, r.count, r.rejected) for r in rows] == [("acme", 1, 1), ("globex", 1, 1)]


async def test_nodes_sharing_a_store_add_to_the_same_figures(store: Store, store_url: StoreUrl) -> None:
    if store_url.kind is not StoreKind.POSTGRESQL:
        pytest.skip("one node owns a SQLite store")
    await admit(store.ledger, DEV, [env("a"), env("b"), env("c")], decide, NOW)
    async with opened(store_url, node="node-b") as other:
        [first] = await store.ledger.claim(["email.send"], 1, NOW, owner="node-a")
        [second, third] = await other.ledger.claim(["email.send"], 2, NOW, owner="node-b")
        await store.ledger.finish(first, EntryState.DELIVERED, "", "", NOW, "t", seconds=0.2)
        await other.ledger.finish(second, EntryState.DELIVERED, "", "", NOW, "t", seconds=0.4)
        await other.ledger.finish(third, EntryState.FAILED, "x", "", NOW, "t", seconds=9.0)
        for ledger in (store.ledger, other.ledger):
            [row] = await ledger.usage(UsageQuery(TODAY, TODAY, group=(Dimension.DEVICE,)))
            assert (row.count, row.failures, row.timed) == (3, 1, 3)
            assert (row.max_ms, row.mean_ms) == (pytest.approx(9000), pytest.approx(3200))
