"""A node's link to PostgreSQL fails under a running deployment, through a proxy the test controls
(`tests.support.pg_proxy`; the shared server is never stopped): its connections go silent for ever (a failover
behind a TCP proxy or pooler that keeps the old sockets open, a NAT that forgot them). Nothing acked is lost,
nothing runs twice, and no call waits for ever."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from cloud_bridge.cli import main
from cloud_bridge.store.pg_signals import ALL_DEVICES, PgSignals
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Envelope
from tests.support.bridge import (
    CountingIntegration,
    DeviceClient,
    Harness,
    HeldIntegration,
    email,
    make_settings,
    running_bridge,
    until,
)
from tests.support.pg_proxy import PgProxy, pg_proxy
from tests.support.stores import PG_ADMIN, made, pg_url

__all__ = ["pg_url"]  # fixtures

SIGNALS_LOST = "store signals lost (other nodes' results are heard on reconnect)"


def batches_refused(bridge: Harness) -> float:
    """Batches the node did not process (not acked: the edge sends them again); the log says so once a minute."""
    value = bridge.bridge.metrics.registry.get_sample_value("bridge_batches_total", {"outcome": "error"})
    return value or 0.0


async def sent_until_accepted(client: DeviceClient, envelope: Envelope, bridge: Harness) -> None:
    """Send `envelope` again each time the node did not process it, as the edge does after its ack timeout (a
    call that drew a stranded connection fails, and the batch is not acked), until it is accepted."""

    def accepted() -> bool:
        return "accepted" in client.states().get(envelope.id, [])

    for _ in range(5):
        before = batches_refused(bridge)
        client.send([envelope])
        await until(lambda: accepted() or batches_refused(bridge) > before, what=f"{envelope.id} answered")  # noqa: B023
        if accepted():
            return
    raise AssertionError(f"{envelope.id} was never accepted")


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
        await sent_until_accepted(client, email("b1"), bridge)
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


async def test_a_node_whose_listening_connection_went_silent_hears_the_other_nodes_again(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node A (behind the proxy) admits, node B runs. A's LISTEN connection waits for notifications and sends
    nothing, so it never learnt that its link went silent: A heard none of B's results again, and its devices
    got them only when they reconnected."""
    on_a, on_b = CountingIntegration(), CountingIntegration()
    files = server_cert_files
    with pg_proxy() as proxy:
        settings_a = make_settings(
            tmp_path / "a", files, store=proxy.url(pg_url), node_id="node-a", bridge={"store_timeout": "1s"}
        )
        settings_b = make_settings(tmp_path / "b", files, store=pg_url, node_id="node-b")
        async for a in running_bridge(settings_a, files["ca"], {"email.send": on_a}):
            assert a.bridge.executor is not None
            await a.bridge.executor.stop()
            async for _ in running_bridge(settings_b, files["ca"], {"email.send": on_b}):
                await _results_after_a_strand(a, proxy)
    assert [job.intent_id for job in on_b.calls] == ["c1", "c2"]
    assert on_a.calls == []


async def _results_after_a_strand(a: Harness, proxy: PgProxy) -> None:
    client = await a.connect(await a.enroll())
    try:
        client.send([email("c1")])
        await until(lambda: "delivered" in client.states().get("c1", []), what="c1 delivered through B's signal")
        assert await asyncio.to_thread(proxy.strand) > 0
        await sent_until_accepted(client, email("c2"), a)
        await until(lambda: "delivered" in client.states().get("c2", []), what="c2 delivered through B's signal")
    finally:
        await client.stop()


async def test_a_database_refusing_the_signals_connection_is_one_line_then_one_when_it_is_back(
    pg_url: StoreUrl, caplog: pytest.LogCaptureFixture
) -> None:
    """Each try to listen again wrote a warning (`store signals lost (OperationalError); listening again in 5.0s`):
    720 lines an hour per node for a database that was down, where the node's other loops wrote two."""
    caplog.set_level(logging.INFO, logger="cloud_bridge.store.pg_signals")
    heard: list[str] = []
    with pg_proxy() as proxy:
        signals = PgSignals(proxy.url(pg_url).conninfo(), node="node-a", timeout=1.0)
        await signals.start(heard.append, lambda: None)
        try:
            assert signals.listening.is_set()
            proxy.refuse()
            tries = proxy.connections
            assert await asyncio.to_thread(proxy.cut) == 2  # the LISTEN connection, both sides
            await until(lambda: proxy.connections >= tries + 4, what="four tries to listen again")
            proxy.accept()
            await until(signals.listening.is_set, what="listening again")
            await until(lambda: ALL_DEVICES in heard, what="every device refreshed")
        finally:
            await signals.stop()
    lines = [r for r in caplog.records if r.name == "cloud_bridge.store.pg_signals" and r.levelno >= logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in lines] == [SIGNALS_LOST, SIGNALS_LOST], lines
    assert "works again after" in lines[1].getMessage()


@pytest.mark.timeout(60)
def test_an_operators_command_against_a_database_that_does_not_answer_fails_in_one_line(
    tmp_path: Path, pg_url: StoreUrl
) -> None:
    """`cloud-bridge devices ls` against a database host that answered nothing (down, or its packets dropped) waited
    for ever: the store's first look (is a store made there?) connected without libpq's connect_timeout."""
    made(pg_url)
    config = tmp_path / "bridge.toml"
    config.write_text('[bridge]\nstore_timeout = "1s"\n')
    with pg_proxy() as proxy:
        proxy.blackhole()
        command = ["devices", "ls", "--store", str(proxy.url(pg_url)), "--config", str(config)]
        result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == ["Error: PostgreSQL store: connection timeout expired"]


def _given_up_and_still_waiting(url: StoreUrl, older_than: float) -> int:
    """Sessions of the node (cloud-bridge ...) on `url`'s database waiting for a lock for over `older_than` s."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'cloud-bridge%%'"
            " AND wait_event_type = 'Lock' AND query_start < clock_timestamp() - make_interval(secs => %s)",
            (url.location.rsplit("/", 1)[1], older_than),
        ).fetchone()
    return int(row[0]) if row is not None else 0


async def test_calls_given_up_behind_a_long_lock_leave_no_session_waiting_on_the_server(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """A statement waiting for a lock that a long transaction holds (a report, a DBA's LOCK TABLE) was given up
    after store_timeout by shutting its socket down, but the server does not notice a client gone while its
    statement waits: every session given up stayed, waiting for the lock, while the node opened new ones (one a
    second or so), until the server's connections ran out for every client. They are cancelled first now."""
    counting = CountingIntegration()
    settings = make_settings(
        tmp_path, server_cert_files, store=pg_url, node_id="node-a", bridge={"store_timeout": "1s"}
    )
    async for bridge in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        await _behind_a_long_lock(bridge, pg_url)
    assert [job.intent_id for job in counting.calls] == ["a1", "b1"]


async def _behind_a_long_lock(bridge: Harness, pg_url: StoreUrl) -> None:
    client = await bridge.connect(await bridge.enroll())
    try:
        client.send([email("a1")])
        await until(lambda: "delivered" in client.states().get("a1", []), what="a1 delivered")
        async with await psycopg.AsyncConnection.connect(pg_url.conninfo("test lock holder")) as holder:
            await holder.execute("LOCK TABLE intents IN ACCESS EXCLUSIVE MODE")
            for _ in range(6):  # the edge sends its batch again and again: each is given up
                before = batches_refused(bridge)
                client.send([email("b1")])
                await until(lambda: batches_refused(bridge) > before, what="b1 given up")  # noqa: B023 - called here
            assert await asyncio.to_thread(_given_up_and_still_waiting, pg_url, 3.0) == 0
            await holder.rollback()
        await sent_until_accepted(client, email("b1"), bridge)
        await until(lambda: "delivered" in client.states().get("b1", []), what="b1 delivered")
    finally:
        await client.stop()
