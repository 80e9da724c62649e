"""A node whose clock is ahead of the others' on one PostgreSQL store: it does not take over the rows the others
are running (their leases are kept in the database's time, not in each node's), and its hourly retention does
not delete rows the other nodes would still admit a copy of (it purges by the store's clock)."""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.node import Bridge
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from tests.support.bridge import (
    CountingIntegration,
    Harness,
    HeldIntegration,
    email,
    make_settings,
    running_bridge,
    until,
)
from tests.support.stores import admit, opened, pg_url

__all__ = ["pg_url"]  # fixtures

SKEW = 5.0  # seconds node B's clock is ahead; the lease is 3 s
DAY = 86_400.0


async def test_a_node_whose_clock_is_ahead_does_not_run_another_nodes_running_job_again(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node A runs a job (held at the provider) under a lease it renews; node B's clock is 5 s ahead. B took
    A's lease as run out at its first look and ran the job too: two emails."""
    held, on_b = HeldIntegration(), CountingIntegration()
    lease = {"lease": "3s"}
    settings_a = make_settings(tmp_path / "a", server_cert_files, store=pg_url, node_id="node-a", bridge=lease)
    settings_b = make_settings(tmp_path / "b", server_cert_files, store=pg_url, node_id="node-b", bridge=lease)
    async for a in running_bridge(settings_a, server_cert_files["ca"], {"email.send": held}):
        b_bridge = Bridge(settings_b, integrations={"email.send": on_b}, clock=lambda: time.time() + SKEW)
        assert b_bridge.executor is None
        await b_bridge.start()
        try:
            await _held_on_a_while_b_looks(a, Harness(b_bridge, settings_b, server_cert_files["ca"]), held)
        finally:
            await b_bridge.stop()
    assert [job.intent_id for job in held.calls] == ["s1"]
    assert on_b.calls == []


async def _held_on_a_while_b_looks(a: Harness, b: Harness, held: HeldIntegration) -> None:
    assert b.bridge.executor is not None
    await b.bridge.executor.stop()  # node A claims the row
    looks: list[float] = []
    claim = b.bridge.store.ledger.claim

    async def watched(kinds: Collection[str], limit: int, now: float, **kw: Any) -> list[LedgerEntry]:
        rows = await claim(kinds, limit, now, **kw)
        looks.append(time.time())
        return rows

    b.bridge.store.ledger.claim = watched  # type: ignore[method-assign]
    client = await a.connect(await a.enroll())
    try:
        client.send([email("s1")])
        await until(lambda: len(held.calls) == 1, what="s1 running on node A")
        started = time.time()
        await b.bridge.executor.start()
        await until(lambda: len([t for t in looks if t > started]) >= 2, what="node B looking twice")
        held.release.set()
        await until(lambda: "delivered" in client.states().get("s1", []), what="s1 delivered")
    finally:
        await client.stop()


async def test_a_node_whose_clock_is_a_day_ahead_does_not_purge_rows_a_copy_of_which_would_run_again(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """An intent created 89.5 days ago (admitted: the limit is 90), delivered and confirmed 29.5 days ago (kept
    30). Node B's clock is one day ahead: its hourly retention deleted the row by that clock, and a late copy of
    the intent (a USB bundle imported again, a batch resent) was admitted on a correct node and ran again."""
    device = DeviceRef("dev-late", "acme", "late")
    now = time.time()
    created, finished = now - 89.5 * DAY, now - 29.5 * DAY
    copy = [Envelope("late-1", "app", "email.send", int(created * 1000), None, 1, {"to": "a@example.com"})]
    async with opened(pg_url, "node-a") as a:
        assert [ack.state for ack in await admit(a.ledger, device, copy, lambda _e: Decision(True), now)] == [
            AckState.ACCEPTED
        ]
        [entry] = await a.ledger.claim(["email.send"], 1, now, owner="node-a")
        await a.ledger.finish(entry, EntryState.DELIVERED, "", "", finished, "smtp")
        assert await a.ledger.confirm(device.device_id, ["late-1"]) == 1
        settings_b = make_settings(tmp_path / "b", server_cert_files, store=pg_url, node_id="node-b")
        b_bridge = Bridge(settings_b, integrations={"email.send": CountingIntegration()}, clock=lambda: now + DAY)
        await b_bridge.start()
        try:
            assert b_bridge.retention is not None
            await b_bridge.retention.run_once()
        finally:
            await b_bridge.stop()
        assert [row.state for row in a.intents.find("late-1")] == [EntryState.DELIVERED]
        again = await admit(a.ledger, device, copy, lambda _e: Decision(True), time.time())
        assert [ack.state for ack in again] == [AckState.DELIVERED]  # a duplicate, answered from its row
