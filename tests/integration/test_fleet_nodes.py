"""The fleet view of a device that moves between two nodes on one PostgreSQL store (in process, real TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from cloud_bridge import fleet_query
from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.node import Bridge
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, make_settings, node, until
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


SKEW = 30.0  # seconds; a node's heartbeat older than 20 s means it has stopped


async def test_nodes_whose_clocks_differ_show_the_same_devices_connected(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node B's clock is 30 s ahead of node A's (and of the database's). Heartbeats were written and judged by
    each node's own clock: B's dashboard (and `devices ls` on a machine whose clock is as far ahead) took A's
    fresh heartbeat as 30 s old, A as stopped, and showed A's device gone; A showed B's device connected for
    50 s after B stopped. Now both are judged by the database's clock, and both nodes show the same."""
    settings_b = make_settings(tmp_path / "node-b", server_cert_files, store=pg_url, node_id="node-b")
    b_bridge = Bridge(settings_b, integrations={"email.send": CountingIntegration()}, clock=lambda: time.time() + SKEW)
    async with node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a:
        await b_bridge.start()
        b = Harness(b_bridge, settings_b, server_cert_files["ca"])
        on_a, on_b = await a.connect(await a.enroll(name="on-a")), await b.connect(await b.enroll(name="on-b"))
        try:

            def seen_from(h: Harness, skew: float) -> dict[str, tuple[bool, str]]:
                # At the node's own time, as its dashboard reads the view.
                rows = fleet_query.overview(h.bridge.registry, h.bridge.store.fleet, now=time.time() + skew)
                return {r.name: (r.connected, r.node) for r in rows}

            both = {"on-a": (True, "node-a"), "on-b": (True, "node-b")}
            await until(lambda: seen_from(a, 0.0) == both, what="both devices connected, seen from node A")
            assert seen_from(b, SKEW) == both
        finally:
            await on_a.stop()
            await on_b.stop()
            await b_bridge.stop()
