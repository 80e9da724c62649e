"""A node's operations surface, in process: /metrics by Prometheus' own parser and conventions, /healthz
following the store's reachability (PostgreSQL refusing connections, then allowing them again)."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from pathlib import Path

import aiohttp
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloud_bridge.node import Bridge
from cloud_bridge.store.url import StoreUrl
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.bridge import (
    CountingIntegration,
    Harness,
    HeldIntegration,
    counting,
    email,
    harness,
    make_settings,
    running_bridge,
    until,
)
from tests.support.disk import fill, small_disk
from tests.support.metrics import check_conventions
from tests.support.stores import PG_ADMIN, pg_url

__all__ = ["counting", "harness", "pg_url"]  # fixtures


async def scrape(harness: Harness) -> dict[str, list[Sample]]:
    async with aiohttp.ClientSession() as http, http.get(f"{harness.metrics_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    families = list(text_string_to_metric_families(text))
    check_conventions(families, "bridge_")
    return {family.name: family.samples for family in families}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


async def test_metrics_say_what_an_operator_alerts_on(harness: Harness, counting: CountingIntegration) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    client.send([email("m-1"), email("m-2"), email("m-3", subject="fail")])
    await until(lambda: {i: s[-1] for i, s in client.states().items()}.get("m-3") == "failed", what="results")
    await until(lambda: len(client.states()) == 3 and len(counting.calls) == 3, what="all three run")
    refused = await harness.connect(creds, password="not-a-token")
    await refused.stop()
    metrics = await scrape(harness)
    await client.stop()

    executions = metrics["bridge_executions"]
    assert value(executions, "bridge_executions_total", kind="email.send", outcome="delivered", code="none") == 2
    assert value(executions, "bridge_executions_total", kind="email.send", outcome="failed", code="test_refused") == 1
    latency = metrics["bridge_provider_request_duration_seconds"]
    assert value(latency, "bridge_provider_request_duration_seconds_count", kind="email.send") == 3
    # The device confirms nothing here: its results are still owed to it.
    ledger = metrics["bridge_ledger_intents"]
    assert value(ledger, "bridge_ledger_intents", state="delivered", kind="email.send") == 2
    assert value(ledger, "bridge_ledger_intents", state="failed", kind="email.send") == 1
    assert value(metrics["bridge_ledger_oldest_queued_age_seconds"], "bridge_ledger_oldest_queued_age_seconds") == 0
    assert value(metrics["bridge_connected_devices"], "bridge_connected_devices") == 1
    assert value(metrics["bridge_enrollments"], "bridge_enrollments_total", result="enrolled") == 1
    assert value(metrics["bridge_connects_refused"], "bridge_connects_refused_total", code="token_invalid") == 1
    assert value(metrics["bridge_store_up"], "bridge_store_up") == 1
    assert value(metrics["bridge_store_commits"], "bridge_store_commits_total") >= 1
    assert value(metrics["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0


class Blocking(HeldIntegration):
    """One job at a time, each held until released: rows stay running and queued while a test looks."""

    concurrency = 1


async def test_ledger_depth_and_oldest_queued_age_are_read_at_scrape(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    clock = [time.time()]
    settings = make_settings(tmp_path, server_cert_files)
    blocking = Blocking()
    bridge = Bridge(settings, integrations={"email.send": blocking}, clock=lambda: clock[0])
    await bridge.start()
    harness = Harness(bridge, settings, server_cert_files["ca"])
    try:
        client = await harness.connect(await harness.enroll())
        # One job at a time: q-1 runs, q-2 is claimed ahead (running in the ledger), q-3 waits queued.
        client.send([email("q-1"), email("q-2"), email("q-3")])
        await until(lambda: len(blocking.calls) == 1 and len(client.states()) == 3, what="q-1 running")

        async def claimed_ahead() -> bool:
            return (await bridge.ledger.depth()).counts.get(("running", "email.send")) == 2

        await until(claimed_ahead, what="q-2 claimed ahead")
        clock[0] += 90
        metrics = await scrape(harness)
        blocking.release.set()
        await until(lambda: all(s[-1] == "delivered" for s in client.states().values()), what="both delivered")
        await client.stop()
    finally:
        blocking.release.set()
        await bridge.stop()
    ledger = metrics["bridge_ledger_intents"]
    assert value(ledger, "bridge_ledger_intents", state="queued", kind="email.send") == 1
    assert value(ledger, "bridge_ledger_intents", state="running", kind="email.send") == 2
    assert value(metrics["bridge_ledger_oldest_queued_age_seconds"], "bridge_ledger_oldest_queued_age_seconds") == 90


def _allow_connections(url: StoreUrl, allowed: bool) -> None:
    database = url.location.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:  # and end the sessions the bridge holds
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


async def health(session: aiohttp.ClientSession, harness: Harness, *, tls: bool) -> tuple[int, dict[str, object]]:
    url = f"{harness.base_url if tls else harness.metrics_url}/healthz"
    async with session.get(url, ssl=harness.client_ssl() if tls else True) as response:
        return response.status, await response.json()


async def test_healthz_follows_the_store(tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl) -> None:
    settings = make_settings(tmp_path, server_cert_files, store=pg_url)
    async for node in running_bridge(settings, server_cert_files["ca"], {}):
        async with aiohttp.ClientSession() as session:
            for tls in (True, False):
                assert await health(session, node, tls=tls) == (200, {"status": "ok", "problems": []})
            await asyncio.to_thread(_allow_connections, pg_url, False)
            try:
                for tls in (True, False):
                    status, body = await health(session, node, tls=tls)
                    assert status == 503
                    assert body["status"] == "unhealthy"
                    problems = body["problems"]
                    assert isinstance(problems, list) and len(problems) == 1
                    assert str(problems[0]).startswith("store "), problems
                metrics = await scrape(node)
                assert value(metrics["bridge_store_up"], "bridge_store_up") == 0
            finally:
                await asyncio.to_thread(_allow_connections, pg_url, True)

            async def healthy(node: Harness = node) -> bool:
                return (await health(session, node, tls=True))[0] == 200

            await until(healthy, timeout=30, what="healthy again: the pool connects by itself, no restart")


async def test_healthz_says_so_while_a_full_disk_fails_every_batch(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    """SQLite: /healthz asked the ledger for a read through its open connection, which a full disk answers, so it
    said 200 while the device registry (a file of its own, opened for each call) refused every batch."""
    with small_disk(tmp_path / "disk") as disk:
        settings = make_settings(disk, server_cert_files)
        async for node in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            client = await node.connect(await node.enroll())

            def errors(node: Harness = node) -> float:
                sample = node.bridge.metrics.registry.get_sample_value("bridge_batches_total", {"outcome": "error"})
                return sample or 0.0

            filler = await asyncio.to_thread(fill, disk)
            try:
                client.send([email(f"full-{n}") for n in range(50)])
                await until(lambda: errors() >= 1, timeout=30, what="a batch the full disk refused")
                async with aiohttp.ClientSession() as session:
                    for tls in (True, False):
                        status, body = await health(session, node, tls=tls)
                        assert status == 503, body
                        [problem] = body["problems"]  # why, never where: strangers read the HTTPS one
                        assert str(problem).startswith("store not reachable: device registry: "), problem
                        assert str(disk) not in str(problem)
            finally:
                filler.unlink()
            async with aiohttp.ClientSession() as session:
                assert await health(session, node, tls=True) == (200, {"status": "ok", "problems": []})
            client.send([email("room-again")])
            await until(partial(lambda c: "room-again" in c.states(), client), timeout=30, what="admitted again")
            await client.stop()


async def test_a_scrape_answers_while_the_registry_does_not(harness: Harness) -> None:
    """The ledger's read had HEALTH_TIMEOUT, the registry's count none: a store that stopped answering (a
    PostgreSQL server behind a partition) held every scrape, so the alert on bridge_store_up never fired."""
    released = threading.Event()

    def counts() -> dict[str, int]:
        released.wait(60)
        return {}

    harness.bridge.registry.counts = counts  # type: ignore[method-assign]
    try:
        metrics = await asyncio.wait_for(scrape(harness), 30)
    finally:
        released.set()
    assert value(metrics["bridge_store_up"], "bridge_store_up") == 0


async def test_healthz_says_stopping_from_the_start_of_a_stop(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """A stopping node closed its MQTT port at once, then gave its running jobs their grace (10 s) and answered
    /healthz 200 all the while: a balancer kept sending the devices it had just let go back to it (leastconn picks
    the emptiest node: this one), refused each time, until the stop ended and its checks failed."""
    provider = HeldIntegration()
    settings = make_settings(tmp_path, server_cert_files)
    bridge = Bridge(settings, integrations={"email.send": provider})
    await bridge.start()
    node = Harness(bridge, settings, server_cert_files["ca"])
    stopping: asyncio.Task[None] | None = None
    try:
        client = await node.connect(await node.enroll())
        try:
            client.send([email("h1")])
            await until(lambda: len(provider.calls) == 1, what="h1's call under way")
            stopping = asyncio.create_task(bridge.stop())
            await until(client.disconnected.is_set, what="the device let go")
        finally:
            await client.stop()
        assert not stopping.done()  # h1's call holds the stop
        async with aiohttp.ClientSession() as session:
            for tls in (True, False):
                assert await health(session, node, tls=tls) == (
                    503,
                    {"status": "stopping", "problems": ["the node is stopping"]},
                )
    finally:
        provider.release.set()
        await (stopping if stopping is not None else bridge.stop())


async def test_an_enrollment_the_store_could_not_serve_is_counted(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    """bridge_enrollments_total counts "enrollment attempts by result"; one answered 503 because the registry's disk
    was full was counted under none, so during a store outage the enrollments failing were not seen there."""
    with small_disk(tmp_path / "disk") as disk:
        settings = make_settings(disk, server_cert_files)
        async for node in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            code = node.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
            key = public_key_pem(generate_private_key_pem())
            filler = await asyncio.to_thread(fill, disk)
            try:
                status, body = await node.post_enroll(code, key)
                assert (status, body["error"]) == (503, "store_unavailable")
            finally:
                filler.unlink()
            metrics = await scrape(node)
            samples = metrics["bridge_enrollments"]
            assert value(samples, "bridge_enrollments_total", result="unavailable") == 1
            assert sum(s.value for s in samples if s.name == "bridge_enrollments_total") == 1
            status, _ = await node.post_enroll(code, key)  # the code was not spent
            assert status == 201
            samples = (await scrape(node))["bridge_enrollments"]
            assert value(samples, "bridge_enrollments_total", result="enrolled") == 1
