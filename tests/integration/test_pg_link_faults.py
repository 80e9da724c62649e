"""A node's link to PostgreSQL fails under a running deployment, through a proxy the test controls
(`tests.support.pg_proxy`; the shared server is never stopped): its connections go silent for ever (a failover
behind a TCP proxy or pooler that keeps the old sockets open, a NAT that forgot them). Nothing acked is lost,
nothing runs twice, and no call waits for ever."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import Harness, HeldIntegration, email, make_settings, running_bridge, until
from tests.support.pg_proxy import PgProxy, pg_proxy
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


async def test_connections_gone_silent_are_given_up_and_the_node_serves_on_new_ones(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Every call on a pooled connection whose link went silent waited for ever (psycopg has no timeout, and the
    pool's check of a connection is a query too): the batch sent after it was never acked, the result of the call
    under way never recorded, a device's connect never answered, and the node could not be stopped."""
    provider = HeldIntegration()
    with pg_proxy() as proxy:
        settings = make_settings(
            tmp_path, server_cert_files, store=proxy.url(pg_url), node_id="node-a", bridge={"store_timeout": "1s"}
        )
        async for bridge in running_bridge(settings, server_cert_files["ca"], {"email.send": provider}):
            await _stranded_under_way(bridge, proxy, provider)
    assert sorted(job.intent_id for job in provider.calls) == ["a1", "b1"]


async def _stranded_under_way(bridge: Harness, proxy: PgProxy, provider: HeldIntegration) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send([email("a1")])
        await until(lambda: len(provider.calls) == 1, what="a1's call under way")
        assert await asyncio.to_thread(proxy.strand) > 0
        client.send([email("b1")])
        await until(lambda: "accepted" in client.states().get("b1", []), what="b1 accepted")
        provider.release.set()
        await until(lambda: "delivered" in client.states().get("a1", []), what="a1 delivered")
        await until(lambda: "delivered" in client.states().get("b1", []), what="b1 delivered")
    finally:
        await client.stop()
    again = await bridge.connect(creds)
    try:
        assert again.accepted
    finally:
        await again.stop()
