"""The fleet view of a device that moves between two nodes on one PostgreSQL store (in process, real TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from pathlib import Path

from cloud_bridge import fleet_query
from cloud_bridge.dashboard.store_data import StoreData
from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.node import Bridge
from cloud_bridge.store.url import StoreUrl
from intent_contract.device_wire import encode_health
from intent_contract.wire import HEALTH
from tests.support.bridge import CountingIntegration, Harness, make_settings, node, until
from tests.support.fleet import sample_report
from tests.support.stack import bridge_cli
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

            async def seen_from(h: Harness, skew: float) -> dict[str, tuple[bool, str]]:
                # What the node's dashboard shows, the node's clock as its own.
                view = StoreData(h.bridge.registry, h.bridge.store.fleet, lambda: time.time() + skew)
                rows = {r.name: r for r in await view.fleet()}
                states = h.bridge.store.fleet.states()
                return {n: (r.connected, s.node if (s := states.get(r.device_id)) else "") for n, r in rows.items()}

            both = {"on-a": (True, "node-a"), "on-b": (True, "node-b")}

            async def seen_from_a() -> bool:
                return await seen_from(a, 0.0) == both

            await until(seen_from_a, what="both devices connected, seen from node A")
            assert await seen_from(b, SKEW) == both
        finally:
            await on_a.stop()
            await on_b.stop()
            await b_bridge.stop()


async def test_devices_ls_on_a_machine_an_hour_ahead_judges_backlogs_and_links_by_the_stores_time(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """`devices ls` runs on any machine. On one whose clock was an hour ahead (a hardware clock kept in local
    time, say), it aged every report and every last contact by that hour: a connected device whose oldest
    pending intent was 90 s old was listed as stuck ("6 pending, the oldest for 1h01m"). The view is now read at
    the store's time."""
    async with node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a:
        creds = await a.enroll()
        client = await a.connect(creds)
        try:
            report = sample_report(at=int(time.time() * 1000), pending=6, oldest_pending_age_ms=90_000)
            client.publish(HEALTH, encode_health(report))

            def reported() -> bool:
                [row] = fleet_query.overview(a.bridge.registry, a.bridge.store.fleet, now=time.time())
                return row.connected and row.report == report

            await until(reported, what="the device connected with its report stored")
            later = ["faketime", "-f", "+1h", *bridge_cli(), "devices", "ls", "--json"]
            store = ["--store", str(pg_url), "--data-dir", str(tmp_path / "operator")]
            for extra in ((), ("--stuck",)):
                done = await asyncio.to_thread(
                    subprocess.run, [*later, *extra, *store], capture_output=True, text=True, timeout=60, check=False
                )
                assert done.returncode == 0, done.stderr
                listed = [(r["name"], r["connected"], r["stuck"]) for r in json.loads(done.stdout)]
                assert listed == ([] if extra else [("boiler-7", True, None)])
        finally:
            await client.stop()
