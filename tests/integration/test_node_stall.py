"""A node whose process stalls (SIGSTOP, a long GC or CPU stall) for longer than its lease, on one PostgreSQL
store: another node takes its rows and runs them; when the stalled node goes on, it starts none of the rows
it had claimed ahead, whose leases ran out meanwhile. Its call under way finishes (its result ignored): the
one call that may reach the provider twice, as when a node dies mid-call."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest

from cloud_bridge.executor import Executor
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Ack, Envelope
from tests.support.bridge import CountingIntegration, until
from tests.support.stores import admit, opened, pg_url

__all__ = ["pg_url"]  # fixtures

DEVICE = DeviceRef("dev-stall", "acme", "stall")
LEASE = 1.5  # seconds; node A stalls for longer


class Gated:
    """One slot; each call waits until its intent's gate opens (set from another thread)."""

    kind = "email.send"
    concurrency = 1

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, intent_id: str) -> asyncio.Event:
        return self.gates.setdefault(intent_id, asyncio.Event())

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job.intent_id)
        await self.gate(job.intent_id).wait()
        return Outcome("sent")

    async def aclose(self) -> None:
        return None


async def no_final(_device_id: str, _ack: Ack) -> None:
    return None


class NodeA:
    """Node A's executor on an event loop of its own thread, so that it can stall while node B runs."""

    def __init__(self, url: StoreUrl) -> None:
        self.url = url
        self.provider = Gated()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor: Executor | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="node-a")

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        async with opened(self.url, "node-a") as store:
            now_ms = int(time.time() * 1000)
            batch = [Envelope(i, "app", "email.send", now_ms, None, 1, {"to": "a@example.com"}) for i in ("x1", "x2")]
            await admit(store.ledger, DEVICE, batch, lambda _e: Decision(True), time.time())
            self.executor = Executor(
                store.ledger, {"email.send": self.provider}, on_final=no_final, owner="node-a", lease=LEASE,
                idle_poll=0.05, stop_grace=0,
            )  # fmt: skip
            await self.executor.start()
            while not self.stop.is_set():
                await asyncio.sleep(0.02)
            await self.executor.stop()

    def call(self, fn: Callable[[], object]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)


async def test_a_node_stalled_past_its_lease_does_not_start_the_rows_it_had_claimed_ahead(
    pg_url: StoreUrl, caplog: pytest.LogCaptureFixture
) -> None:
    """Node A runs x1 (its one slot) with x2 claimed ahead, then stalls past its lease; node B takes both and
    delivers them. A goes on, x1's call returns (its result ignored), and its freed slot started x2: a second
    call of x2 that no crash explains, on any provider, for every row a stalled node held claimed ahead."""
    caplog.set_level(logging.INFO)
    a = NodeA(pg_url)
    a.thread.start()
    thaw = threading.Event()
    try:
        async with opened(pg_url, "node-b") as b:

            def row_state(intent_id: str) -> tuple[EntryState, str] | None:
                rows = b.intents.find(intent_id)
                return (rows[0].state, rows[0].owner) if rows else None

            await until(lambda: a.provider.calls == ["x1"], what="x1's call under way on node A")
            await until(lambda: row_state("x2") == (EntryState.RUNNING, "node-a"), what="x2 claimed ahead on A")
            a.call(thaw.wait)  # node A's process stalls: nothing of it runs, not even its lease renewals
            on_b = CountingIntegration()
            rescuer = Executor(b.ledger, {"email.send": on_b}, on_final=no_final, owner="node-b", idle_poll=0.05)
            await rescuer.start()
            try:
                await until(
                    lambda: all(row_state(i) == (EntryState.DELIVERED, "") for i in ("x1", "x2")),
                    timeout=30, what="x1 and x2 delivered by node B",
                )  # fmt: skip
            finally:
                await rescuer.stop()
            assert sorted(job.intent_id for job in on_b.calls) == ["x1", "x2"]
            thaw.set()
            a.call(a.provider.gate("x1").set)  # x1's call (under way at the stall) returns
            await until(lambda: "finish of dev-stall/x1 ignored" in caplog.text, what="x1's result ignored")
            assert a.executor is not None
            executor = a.executor
            await until(lambda: executor.in_flight == 0 or "x2" in a.provider.calls, what="node A's slot freed")
            assert a.provider.calls == ["x1"]
            assert row_state("x2") == (EntryState.DELIVERED, "")
    finally:
        thaw.set()
        if a.loop is not None:
            for gate in ("x1", "x2"):
                a.call(a.provider.gate(gate).set)
        a.stop.set()
        a.thread.join(30)
