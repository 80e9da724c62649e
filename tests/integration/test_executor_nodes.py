"""Executors of three nodes claiming one PostgreSQL queue: each job runs exactly once, and a job of a
node that died is run by another once its lease runs out, with the same idempotency key; a node without
an integration leaves that kind's rows to the nodes that have it (a rolling reload)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cloud_bridge.executor import Executor
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.intent_sql import IntentQuery
from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store.url import StoreUrl
from cloud_bridge.tenant_pools import SHARED_ORPHAN_GRACE
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.bridge import CountingIntegration, Harness, email, make_settings, node, running_bridge, until
from tests.support.stores import admit, opened, pg_url

__all__ = ["pg_url"]  # fixtures

DEVICES = [DeviceRef(f"dev-{n}", "acme", f"d{n}") for n in range(5)]
PER_DEVICE = 120


class Provider:
    """Counts executions per (device, intent) and idempotency keys; takes a little time per call."""

    kind = "email.send"
    concurrency = 8

    def __init__(self, runs: Counter[tuple[str, str]], keys: Counter[str], *, hang: bool = False) -> None:
        self.runs, self.keys, self.hang, self.mine = runs, keys, hang, 0
        self.started = asyncio.Event()

    async def execute(self, job: Job) -> Outcome:
        self.keys[job.idempotency_key] += 1
        self.started.set()
        if self.hang:
            await asyncio.Event().wait()  # a node that dies mid-call never returns
        await asyncio.sleep(random.uniform(0, 0.004))
        self.runs[(job.device_id, job.intent_id)] += 1
        self.mine += 1
        return Outcome("ok")

    async def aclose(self) -> None:
        return None


async def no_final(_device_id: str, _ack: Ack) -> None:
    return None


def envelopes(prefix: str, count: int) -> list[Envelope]:
    now_ms = int(time.time() * 1000)
    return [
        Envelope(f"{prefix}-{n}", "app", "email.send", now_ms, None, 1, {"to": "a@example.com"}) for n in range(count)
    ]


async def test_three_nodes_claiming_one_queue_run_each_job_once(pg_url: StoreUrl) -> None:
    runs: Counter[tuple[str, str]] = Counter()
    keys: Counter[str] = Counter()
    async with opened(pg_url, "node-0") as s0, opened(pg_url, "node-1") as s1, opened(pg_url, "node-2") as s2:
        for device in DEVICES:
            await admit(s0.ledger, device, envelopes("i", PER_DEVICE), lambda _e: Decision(True), time.time())
        providers = [Provider(runs, keys) for _ in range(3)]
        executors = [
            Executor(s.ledger, {"email.send": p}, on_final=no_final, owner=f"node-{n}", idle_poll=0.05)
            for n, (s, p) in enumerate(zip([s0, s1, s2], providers, strict=True))
        ]
        for executor in executors:
            await executor.start()
        total = len(DEVICES) * PER_DEVICE
        try:
            async with asyncio.timeout(120):
                while sum(runs.values()) < total:
                    await asyncio.sleep(0.05)
                # Let any claim that would be a second run surface before looking.
                await asyncio.sleep(0.3)
        finally:
            for executor in executors:
                await executor.stop()
        assert len(runs) == total
        twice = {k: n for k, n in runs.items() if n > 1}
        assert not twice, twice
        assert all(p.mine > 0 for p in providers), [p.mine for p in providers]
        for device in DEVICES:
            states = {a.state for a in await s1.ledger.unconfirmed(device.device_id)}
            assert states == {AckState.DELIVERED}


async def test_a_job_of_a_dead_node_runs_again_elsewhere_after_its_lease_with_the_same_key(pg_url: StoreUrl) -> None:
    runs: Counter[tuple[str, str]] = Counter()
    keys: Counter[str] = Counter()
    async with opened(pg_url, "node-a") as a, opened(pg_url, "node-b") as b:
        await admit(a.ledger, DEVICES[0], envelopes("j", 3), lambda _e: Decision(True), time.time())
        dying = Provider(runs, keys, hang=True)
        doomed = Executor(a.ledger, {"email.send": dying}, on_final=no_final, owner="node-a", lease=3.0, stop_grace=0)
        await doomed.start()
        await asyncio.wait_for(dying.started.wait(), 30)
        # node-a "dies": its jobs are cut off mid-call, it renews no lease and finishes nothing.
        await doomed.stop()
        survivor = Provider(runs, keys)
        rescuer = Executor(b.ledger, {"email.send": survivor}, on_final=no_final, owner="node-b", idle_poll=0.2)
        await rescuer.start()
        try:
            async with asyncio.timeout(60):
                while sum(runs.values()) < 3:
                    await asyncio.sleep(0.05)
        finally:
            await rescuer.stop()
        assert sorted(i for _, i in runs) == ["j-0", "j-1", "j-2"]
        assert all(n == 1 for n in runs.values())
        # The provider saw each job under one idempotency key: the dead node's call and the rerun share it.
        assert sorted(keys.values()) == [2, 2, 2]
        codes = Counter(r.code for r in await b.ledger.audit(DEVICES[0].device_id))
        assert codes["lease_expired"] == 3


async def test_a_node_without_an_integration_leaves_its_rows_to_the_node_that_has_it_during_a_rolling_reload(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node A is already reloaded with email.send, node B not yet (no integration at all). B's executor used
    to take A's queued email rows as rows no integration runs and fail them for good (`no_integration`);
    on a shared store it leaves them for SHARED_ORPHAN_GRACE, and A runs them."""
    on_a = CountingIntegration()
    settings_b = make_settings(tmp_path / "node-b", server_cert_files, store=pg_url, node_id="node-b")
    async with node(tmp_path, server_cert_files, pg_url, "node-a", on_a) as a:
        async for b in running_bridge(settings_b, server_cert_files["ca"], {}):
            await _rows_left_to_node_a(a, b)


async def _rows_left_to_node_a(a: Harness, b: Harness) -> None:
    assert a.bridge.executor is not None
    await a.bridge.executor.stop()  # A's slots are busy (or A is reloaded a second later)
    looks: list[float] = []  # when node B looked for rows no integration of its runs
    claim = b.bridge.store.ledger.claim

    async def watched(kinds: Collection[str], limit: int, now: float, **kw: Any) -> list[LedgerEntry]:
        rows = await claim(kinds, limit, now, **kw)
        if "email.send" in kinds:
            looks.append(time.time())
        return rows

    b.bridge.store.ledger.claim = watched  # type: ignore[method-assign]
    client = await a.connect(await a.enroll())
    try:
        client.send([email(f"m{n}") for n in range(3)])
        await until(lambda: all("accepted" in client.states().get(f"m{n}", []) for n in range(3)), what="admitted")
        queued_at = time.time()
        await until(lambda: any(t > queued_at for t in looks), what="node B looking after the admission")
        assert {i.state for i in b.bridge.store.intents.rows(IntentQuery())} == {EntryState.QUEUED}
        await a.bridge.executor.start()
        await until(lambda: all("delivered" in client.states().get(f"m{n}", []) for n in range(3)), what="run by A")
        assert not [s for n in range(3) for s in client.states()[f"m{n}"] if s == "failed"]
    finally:
        await client.stop()


async def test_on_a_shared_store_rows_no_node_runs_fail_after_the_grace(pg_url: StoreUrl) -> None:
    """The grace only delays the end of rows of a kind no node runs: due longer than it, they end
    failed/no_integration as before."""
    async with opened(pg_url, node="node-b") as b:
        now = time.time()
        await admit(b.ledger, DEVICES[0], envelopes("m", 3), lambda _: Decision(True), now)
        clock = [now + 1.0]
        executor = Executor(b.ledger, {}, on_final=no_final, owner="node-b", now=lambda: clock[0],
                            orphan_grace=SHARED_ORPHAN_GRACE)  # fmt: skip
        assert await executor.run_due() == 0
        clock[0] = now + SHARED_ORPHAN_GRACE + 1
        assert await executor.run_due() == 3
        assert {(i.state, i.code) for i in b.intents.rows(IntentQuery())} == {(EntryState.FAILED, "no_integration")}
