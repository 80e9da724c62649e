"""The fleet view of a device that moves between two nodes on one PostgreSQL store (in process, real TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from cloud_bridge import fleet_query
from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, node, until
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


async def _by_hand(h: Harness) -> FleetDesk:
    """The node's fleet desk with its loop stopped: the test says when it writes (`flush`)."""
    desk = h.bridge.fleet_desk
    assert desk is not None and desk._task is not None
    desk._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await desk._task
    return desk


async def test_a_device_back_on_node_a_before_node_a_saw_it_leave_is_shown_connected_there(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node A holds a device's session, which a link fault leaves open at A; the device connects again through
    the balancer to node B, which writes it as B's; that link drops too and the device comes back to node A,
    taking over A's old session. A's set of sessions is the same at both its writes, so A wrote nothing; B
    then saw its session end and wrote the device as nobody's: `devices ls`, the dashboard and `diagnose`
    (which does not ask a device no node holds) called it gone while it was connected to node A."""
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", CountingIntegration()) as b,
    ):
        creds = await a.enroll()
        desk_a, desk_b = await _by_hand(a), await _by_hand(b)
        clients = [await a.connect(creds)]
        try:
            await desk_a.flush()
            clients.append(await b.connect(creds))  # A's session is still open (the link fault)
            await desk_b.flush()
            clients.append(await a.connect(creds))  # back at A: takes over A's old session
            await until(lambda: not clients[0].accepted, what="node A's old session taken over")
            await clients[1].stop()
            await until(lambda: creds.device_id not in b.bridge.listener.connected(), what="B's session ended")
            await desk_b.flush()
            await desk_a.flush()
            assert a.bridge.listener.connected() == [creds.device_id]
            for h in (a, b):  # as any process reading the store sees it
                [row] = await asyncio.to_thread(
                    fleet_query.overview, h.bridge.registry, h.bridge.store.fleet, now=time.time()
                )
                assert (row.connected, row.node) == (True, "node-a")
        finally:
            for client in clients:
                await client.stop()
