"""Tenants on every store backend: which tenants have work waiting, a claim that takes only one tenant's
rows (due, by priority and age; and lapsed leases) while another tenant's backlog is older, and a tenant's
own limits spent by all its devices together, also through two nodes."""

from __future__ import annotations

import asyncio

from cloud_bridge.ledger import Ledger
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.ratelimit import Limits, RateRule
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from tests.support.stores import admit, opened, store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0
A1 = DeviceRef("dev-a1", "acme", "boiler-1")
A2 = DeviceRef("dev-a2", "acme", "boiler-2")
B1 = DeviceRef("dev-b1", "bravo", "pump-1")


def env(ident: str, kind: str = "email.send", priority: int = 0) -> Envelope:
    return Envelope(ident, "hvac-ui", kind, int(NOW * 1000) - 5000, None, 1, {"to": "a@example.com"}, priority)


def allow(_: Envelope) -> Decision:
    return Decision(True)


async def test_a_claim_for_one_tenant_skips_the_others_backlog(store: Store) -> None:
    ledger: Ledger = store.ledger
    await admit(ledger, A1, [env(f"a{i}") for i in range(30)], allow, NOW)
    await admit(ledger, A2, [env("a-sms", "sms.send")], allow, NOW)
    await admit(ledger, B1, [env("b0"), env("b1", priority=5), env("b-sms", "sms.send")], allow, NOW + 1)
    assert await ledger.waiting_tenants(["email.send"], NOW + 1) == ["acme", "bravo"]
    assert await ledger.waiting_tenants(["notify"], NOW + 1) == []

    got = await ledger.claim(["email.send"], 5, NOW + 1, owner="n", tenant="bravo")
    assert [(e.tenant, e.intent_id) for e in got] == [("bravo", "b1"), ("bravo", "b0")]
    assert await ledger.waiting_tenants(["email.send"], NOW + 1) == ["acme"]
    got = await ledger.claim(["email.send", "sms.send"], 3, NOW + 1, owner="n", tenant="acme")
    assert [e.intent_id for e in got] == ["a0", "a1", "a2"]
    got = await ledger.claim(["sms.send"], 3, NOW + 1, owner="n", tenant="bravo")
    assert [e.intent_id for e in got] == ["b-sms"]
    # Without a tenant, a claim takes every tenant's rows, as before.
    got = await ledger.claim(["sms.send"], 3, NOW + 1, owner="n")
    assert [e.intent_id for e in got] == ["a-sms"]
    assert await ledger.claim(["email.send"], 5, NOW + 1, tenant="nobody") == []


async def test_rows_whose_lease_ran_out_are_waiting_work_of_their_tenant(store: Store) -> None:
    ledger: Ledger = store.ledger
    await admit(ledger, B1, [env("b0")], allow, NOW)
    [held] = await ledger.claim(["email.send"], 1, NOW, owner="node-a", lease=10, tenant="bravo")
    assert await ledger.waiting_tenants(["email.send"], NOW + 5) == []
    assert await ledger.waiting_tenants(["email.send"], NOW + 11) == ["bravo"]
    assert await ledger.claim(["email.send"], 1, NOW + 11, owner="node-b", tenant="acme") == []
    [again] = await ledger.claim(["email.send"], 1, NOW + 11, owner="node-b", tenant="bravo")
    assert (again.intent_id, again.owner, again.tries) == (held.intent_id, "node-b", 2)


def tenant_quota(quota: int, device_quota: int | None = None) -> Decision:
    return Decision(True, limits=Limits(daily_quota=device_quota), tenant_limits=Limits(daily_quota=quota))


async def test_a_tenants_quota_is_shared_by_its_devices_and_a_refusal_spends_neither(store: Store) -> None:
    ledger: Ledger = store.ledger
    three = tenant_quota(3, device_quota=2)
    acks = await admit(ledger, A1, [env("a"), env("b"), env("c")], lambda _: three, NOW)
    assert [(a.id, a.code) for a in acks] == [("a", ""), ("b", ""), ("c", "quota_exceeded")]
    assert not acks[2].detail.startswith("tenant's")  # the device's own quota of 2
    acks = await admit(ledger, A2, [env("d"), env("e")], lambda _: three, NOW + 1)
    assert [(a.id, a.code) for a in acks] == [("d", ""), ("e", "quota_exceeded")]
    assert acks[1].detail.startswith("tenant's daily quota of 3")
    # e was refused by the tenant: A2's own quota of 2 still has one left once the tenant's has room.
    acks = await admit(ledger, A2, [env("f"), env("g")], lambda _: tenant_quota(10, device_quota=2), NOW + 2)
    assert [(a.id, a.code) for a in acks] == [("f", ""), ("g", "quota_exceeded")]
    # Another tenant has its own.
    [other] = await admit(ledger, B1, [env("h")], lambda _: three, NOW + 3)
    assert other.state is AckState.ACCEPTED


async def test_a_tenants_rate_holds_across_nodes_of_one_store(store_url: StoreUrl) -> None:
    """Devices of one tenant admitted on two nodes at once share the tenant's bucket."""
    decide = Decision(True, tenant_limits=Limits(RateRule(rate=0.001, burst=3)))
    devices = [DeviceRef(f"dev-{n}", "acme", f"boiler-{n}") for n in range(8)]
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        pairs = zip(devices, [a, b] * 4, strict=True)
        results = await asyncio.gather(*(admit(node.ledger, d, [env("i")], lambda _: decide, NOW) for d, node in pairs))
    states = [acks[0].state for acks in results]
    assert states.count(AckState.ACCEPTED) == 3, states
    assert states.count(AckState.REJECTED) == 5


async def test_a_daily_quota_holds_when_the_nodes_clocks_disagree_at_midnight(store_url: StoreUrl) -> None:
    """Node b's clock is a second behind node a's across UTC midnight (or one node's clock steps back):
    a count node a started for the new day is not a fresh count for node b's old day, nor the reverse."""
    decide = Decision(True, limits=Limits(daily_quota=3), tenant_limits=Limits(daily_quota=5))
    midnight = (NOW // 86_400 + 1) * 86_400
    ids = iter(f"i{n}" for n in range(100))

    async def spend(node: Store, now: float, count: int) -> list[str]:
        acks = await admit(node.ledger, A1, [env(next(ids)) for _ in range(count)], lambda _: decide, now)
        return [a.code for a in acks]

    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        assert await spend(b, midnight - 2, 3) == ["", "", ""]  # the device's quota of day D, used up
        assert await spend(a, midnight + 0.5, 1) == [""]  # day D+1 on node a's clock
        # Node b still reads day D: the quota of D is used up, and the new day's unit was spent.
        late = await spend(b, midnight - 0.5, 3)
        again = await spend(a, midnight + 1, 3)
    allowed = late.count("") + again.count("")
    assert allowed == 2, (late, again)  # 3 a day: one spent at midnight + 0.5, two more, whichever clock
    assert set(late + again) == {"", "quota_exceeded"}


async def test_a_bucket_written_by_a_clock_an_hour_ahead_refills_on_time(store_url: StoreUrl) -> None:
    """Node a's clock ran an hour ahead when it admitted a device's intent; node b's is right. The bucket
    refills on node b as it would have (not an hour later), and is no fuller than its burst."""
    decide = Decision(True, limits=Limits(RateRule(rate=1.0, burst=2)))
    ids = iter(f"r{n}" for n in range(100))

    async def spend(node: Store, now: float, count: int) -> list[str]:
        acks = await admit(node.ledger, A1, [env(next(ids)) for _ in range(count)], lambda _: decide, now)
        return [a.code for a in acks]

    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        assert await spend(a, NOW + 3600, 2) == ["", ""]  # the bucket is empty, as of an hour from now
        assert await spend(b, NOW, 1) == ["rate_limited"]
        # Ten seconds on: ten tokens' worth of time, at most the burst of two.
        assert await spend(b, NOW + 10, 3) == ["", "", "rate_limited"]
