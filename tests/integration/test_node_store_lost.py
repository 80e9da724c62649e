"""One node of several loses its link to PostgreSQL (through a proxy the test controls, `tests.support.pg_proxy`;
the shared server is never stopped) while its devices stay connected to it: past its lease it lets them go, so
that they reconnect through the balancer to a node that reaches the store; what they had sent is admitted there
once, and nothing runs twice when the link comes back."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, email, make_settings, running_bridge, until
from tests.support.pg_proxy import PgProxy, pg_proxy
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


async def test_a_node_cut_off_from_the_store_lets_its_devices_go_to_the_other_nodes(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose link to the database was cut kept its devices' sessions open for as long as the cut lasted:
    every batch they sent went unacked (resent on the same session after each ack timeout), while the other
    nodes reached the store; a TCP balancer's health check takes a node out for new connections only."""
    caplog.set_level(logging.WARNING, logger="cloud_bridge.store_loss")
    on_a, on_b = CountingIntegration(), CountingIntegration()
    files = server_cert_files
    with pg_proxy() as proxy:
        bridge = {"store_timeout": "1s", "lease": "3s"}
        settings_a = make_settings(tmp_path / "a", files, store=proxy.url(pg_url), node_id="node-a", bridge=bridge)
        settings_b = make_settings(tmp_path / "b", files, store=pg_url, node_id="node-b", bridge=bridge)
        async for a in running_bridge(settings_a, files["ca"], {"email.send": on_a}):
            async for b in running_bridge(settings_b, files["ca"], {"email.send": on_b}):
                await _cut_while_connected(a, b, proxy, caplog)
    calls = sorted(job.intent_id for job in [*on_a.calls, *on_b.calls])
    assert calls == ["s1", "s2"]
    lost = [r.getMessage() for r in caplog.records if r.name == "cloud_bridge.store_loss"]
    assert len(lost) == 2, lost
    assert lost[0].startswith("the store has not answered for 3 s (the lease): 1 device sessions closed"), lost


async def _cut_while_connected(a: Harness, b: Harness, proxy: PgProxy, caplog: pytest.LogCaptureFixture) -> None:
    creds = await a.enroll()
    client = await a.connect(creds)
    try:
        client.send([email("s1")])
        await until(lambda: "delivered" in client.states().get("s1", []), what="s1 delivered")
        await asyncio.to_thread(proxy.blackhole)
        client.send([email("s2")])
        await until(client.disconnected.is_set, timeout=60, what="node A letting the device go")
        assert "s2" not in client.states()  # never acked by node A: the edge still holds it
    finally:
        await client.stop()
    again = await b.connect(creds)  # the balancer sends its reconnect to a node that reaches the store
    try:
        assert again.accepted
        again.send([email("s2")])  # the edge sends again what was not acked
        await until(lambda: "delivered" in again.states().get("s2", []), what="s2 delivered through B")
    finally:
        await again.stop()
    await asyncio.to_thread(proxy.resume)  # what node A had sent into the cut reaches the server now
    await until(lambda: "store answers again" in caplog.text, timeout=30, what="node A's store back")
