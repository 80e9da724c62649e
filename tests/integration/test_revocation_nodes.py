"""A device revoked while several nodes on one PostgreSQL store hold its work: batches still queued on the
node that held its session are not admitted, and a node that has not polled the revocation yet does not run
its queued rows."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloud_bridge.intent_sql import IntentQuery
from cloud_bridge.ledger_plan import Request
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Ack
from tests.support.bridge import (
    CountingIntegration,
    Creds,
    DeviceClient,
    Harness,
    HeldIntegration,
    counting,
    email,
    harness,
    make_settings,
    node,
    running_bridge,
    until,
)
from tests.support.stores import pg_url

__all__ = ["counting", "harness", "pg_url"]  # fixtures


async def test_batches_queued_on_the_node_that_dropped_a_revoked_device_are_not_admitted(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node A's admission of the device's first batch is held; two more batches wait in the device's queue on
    A. The device is revoked (through node B) and A drops its session. They used to be admitted anyway when
    A got to them (`accepted`, written to the ledger, counted in usage), and run by a node that had not
    polled the revocation yet; the held one too, whose transaction came after the revocation."""
    on_a, on_b = CountingIntegration(), CountingIntegration()
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", on_a) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", on_b) as b,
    ):
        creds, client = await _revoked_with_batches_queued(a, lambda: b.bridge.registry.revoke)
        rows = a.bridge.store.intents.rows(IntentQuery(device_id=creds.device_id))
        assert [(r.intent_id, r.state, r.code) for r in rows] == []
        assert on_a.calls == on_b.calls == []
        assert "accepted" not in str(client.states())


async def test_batches_queued_on_a_single_node_when_it_dropped_a_revoked_device_are_not_admitted(
    harness: Harness, counting: CountingIntegration
) -> None:
    """The same on one node with its SQLite store: the batches still queued when the watcher dropped the
    session are dropped; the one whose admission was under way ends unrun, failed/device_revoked."""
    creds, _client = await _revoked_with_batches_queued(harness, lambda: harness.bridge.registry.revoke)
    query = IntentQuery(device_id=creds.device_id)
    await until(lambda: all(r.state.final for r in harness.bridge.store.intents.rows(query)), what="m0 ended")
    rows = harness.bridge.store.intents.rows(query)
    assert [(r.intent_id, r.state, r.code) for r in rows] == [("m0", EntryState.FAILED, "device_revoked")]
    assert counting.calls == []


async def _revoked_with_batches_queued(
    a: Harness, revoke: Callable[[], Callable[[str, float], object]]
) -> tuple[Creds, DeviceClient]:
    """Node `a` holds the device's session and admits its first batch (held while the rest happens); two more
    batches queue behind it; the device is revoked and `a` drops its session; the admission goes on."""
    service = a.bridge.service
    assert service is not None
    entered, release = asyncio.Event(), asyncio.Event()
    ledger = a.bridge.ledger
    admit, admit_claiming = ledger.admit, ledger.admit_claiming

    async def held_admit(device: Any, requests: Sequence[Request], now: float) -> list[Ack]:
        entered.set()
        await release.wait()
        return await admit(device, requests, now)

    async def held_claiming(device: Any, requests: Sequence[Request], now: float, offer: Any) -> Any:
        entered.set()
        await release.wait()
        return await admit_claiming(device, requests, now, offer)

    ledger.admit = held_admit  # type: ignore[method-assign]
    ledger.admit_claiming = held_claiming  # type: ignore[method-assign]
    creds = await a.enroll()
    client = await a.connect(creds)
    try:
        client.send([email("m0")])
        await until(entered.is_set, what="the first batch's admission under way")
        client.send([email("m1")])
        client.send([email("m2")])
        queue = service._queues._queues[creds.device_id]  # behind the held one (sent after its first stage)
        await until(lambda: len(queue) == 2, what="the later batches queued on node A")
        revoke()(creds.device_id, time.time())
        await until(client.disconnected.is_set, what="the node dropped the revoked device")
        release.set()
        worker = service._queues._workers[creds.device_id]
        await until(worker.done, what="the node through the device's queue")
    finally:
        await client.stop()
    return creds, client


async def test_a_node_that_has_not_seen_a_revocation_yet_does_not_run_the_devices_rows(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node B polls the revocation counter late (here: never): its executor claimed the revoked device's queued
    rows and ran them at the provider, up to a poll after the revocation."""
    on_a, on_b = CountingIntegration(), CountingIntegration()
    settings_b = make_settings(tmp_path / "node-b", server_cert_files, store=pg_url, node_id="node-b")
    settings_b = dataclasses.replace(settings_b, revocation_poll=3600.0)
    async with node(tmp_path, server_cert_files, pg_url, "node-a", on_a) as a:
        async for b in running_bridge(settings_b, server_cert_files["ca"], {"email.send": on_b}):
            await _revoked_before_node_b_polls(a, b)
    assert on_a.calls == on_b.calls == []


async def _revoked_before_node_b_polls(a: Harness, b: Harness) -> None:
    assert a.bridge.executor is not None and b.bridge.executor is not None
    await a.bridge.executor.stop()
    await b.bridge.executor.stop()
    creds = await a.enroll()
    client = await a.connect(creds)
    try:
        client.send([email("r0"), email("r1")])
        await until(lambda: all("accepted" in client.states().get(i, []) for i in ("r0", "r1")),
                    what="admitted")  # fmt: skip
        a.bridge.registry.revoke(creds.device_id, time.time())
        await until(client.disconnected.is_set, what="node A dropped the revoked device")
    finally:
        await client.stop()
    assert b.bridge.listener is not None
    assert creds.device_id not in b.bridge.listener.revoked
    await b.bridge.executor.start()
    query = IntentQuery(device_id=creds.device_id)

    def ended() -> bool:
        return all(r.state.final for r in b.bridge.store.intents.rows(query))

    await until(ended, what="the revoked device's rows ended")
    rows = b.bridge.store.intents.rows(query)
    assert sorted((r.intent_id, r.state, r.code) for r in rows) == [
        ("r0", EntryState.FAILED, "device_revoked"),
        ("r1", EntryState.FAILED, "device_revoked"),
    ]


async def test_a_revoked_devices_results_are_settled_so_that_retention_deletes_them(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """A result final before the revocation and not yet confirmed, and one whose call was under way at the
    revocation, used to stay unconfirmed for good (no edge can confirm them: the device cannot connect, and a
    revoked device's receipt carries no results), and nothing but SQL ever deleted them."""
    held, on_b = HeldIntegration(), CountingIntegration()
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", held) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", on_b) as b,
    ):
        assert b.bridge.executor is not None
        await b.bridge.executor.stop()  # node A runs them, the second one held mid-call
        creds = await a.enroll()
        client = await a.connect(creds)  # a device that never confirms (its confirms were lost)
        try:
            held.release.set()
            client.send([email("c0")])
            await until(lambda: "delivered" in client.states().get("c0", []), what="c0 delivered")
            held.release.clear()
            client.send([email("c1")])
            await until(lambda: len(held.calls) == 2, what="c1's call under way")
            b.bridge.registry.revoke(creds.device_id, time.time())
            await until(client.disconnected.is_set, what="node A dropped the revoked device")
            held.release.set()
        finally:
            await client.stop()
        query = IntentQuery(device_id=creds.device_id)
        await until(lambda: all(r.state.final for r in a.bridge.store.intents.rows(query)), what="c1 ended")
        later = time.time() + 60
        purged = a.bridge.store.intents.purge(later, None, later * 1000)
        assert purged.intents == 2
        assert a.bridge.store.intents.rows(query) == []
        assert [job.intent_id for job in held.calls] == ["c0", "c1"]


async def test_a_single_nodes_revoked_devices_results_are_settled_as_it_sees_the_revocation(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """The same on one node with its SQLite store, whose registry and ledger are separate files (so the
    revocation cannot settle the ledger's rows in its transaction, as PostgreSQL's does): they stayed
    unconfirmed for good. The node's watcher settles them when it sees the revocation, and the finish of the
    call under way at it settles its own row."""
    held = HeldIntegration()
    settings = make_settings(tmp_path, server_cert_files)
    async for h in running_bridge(settings, server_cert_files["ca"], {"email.send": held}):
        creds, client = await _delivered_unconfirmed(h, held)
        try:
            held.release.clear()
            client.send([email("c1")])
            await until(lambda: len(held.calls) == 2, what="c1's call under way")
            h.bridge.registry.revoke(creds.device_id, time.time())
            await until(client.disconnected.is_set, what="the node dropped the revoked device")
            held.release.set()
        finally:
            await client.stop()
        await _purged(h, creds, 2)


async def test_a_device_revoked_while_its_single_node_was_down_has_its_results_settled_at_the_start(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """`devices revoke` while the SQLite node is stopped: the node's next start settles the device's results."""
    held = HeldIntegration()
    settings = make_settings(tmp_path, server_cert_files)
    async for h in running_bridge(settings, server_cert_files["ca"], {"email.send": held}):
        creds, client = await _delivered_unconfirmed(h, held)
        await client.stop()
    h.bridge.registry.revoke(creds.device_id, time.time())  # as `cloud-bridge devices revoke` does, node down
    async for h in running_bridge(settings, server_cert_files["ca"], {"email.send": held}):
        await _purged(h, creds, 1)


async def _delivered_unconfirmed(h: Harness, held: HeldIntegration) -> tuple[Creds, DeviceClient]:
    """A device that never confirms (its confirms were lost), and its c0 delivered."""
    creds = await h.enroll()
    client = await h.connect(creds)
    held.release.set()
    client.send([email("c0")])
    await until(lambda: "delivered" in client.states().get("c0", []), what="c0 delivered")
    return creds, client


async def _purged(h: Harness, creds: Creds, count: int) -> None:
    """The device's `count` rows end and are settled (at the watcher's next poll), and then purged."""
    query = IntentQuery(device_id=creds.device_id)

    def settled() -> bool:
        rows = h.bridge.store.intents.rows(query)
        return len(rows) == count and all(r.state.final and r.confirmed for r in rows)

    await until(settled, what="its rows ended and settled")
    later = time.time() + 60
    assert h.bridge.store.intents.purge(later, None, later * 1000).intents == count
    assert h.bridge.store.intents.rows(query) == []
