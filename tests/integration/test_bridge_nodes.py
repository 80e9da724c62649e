"""Several bridge nodes on one PostgreSQL store, in one process each with its own listeners: results
finished on one node reach a device held by another, revocation and tokens hold on every node, and an
enrollment code works once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cloud_bridge.store.url import StoreUrl
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.bridge import CountingIntegration, a_admits_b_executes, email, node, until
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


async def test_a_result_finished_on_node_b_reaches_the_device_on_node_a(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    on_a, on_b = CountingIntegration(), CountingIntegration()
    async with a_admits_b_executes(tmp_path, server_cert_files, pg_url, on_a, on_b) as (_a, b, creds, client):
        client.send([email("x1"), email("x2"), email("x3", subject="fail")])
        await until(
            lambda: all(len(client.states().get(i, [])) >= 2 for i in ("x1", "x2", "x3")),
            what="final results at the device on node A",
        )
        finals = {i: states[-1] for i, states in client.states().items()}
        assert finals == {"x1": "delivered", "x2": "delivered", "x3": "failed"}
        assert sorted(job.intent_id for job in on_b.calls) == ["x1", "x2", "x3"]
        assert on_a.calls == []
        assert b.bridge.listener is not None
        assert not b.bridge.listener.holds(creds.device_id)


async def test_revocation_on_one_node_drops_the_session_on_the_other(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", CountingIntegration()) as b,
    ):
        creds = await a.enroll()
        client = await a.connect(creds)
        try:
            assert client.accepted
            b.bridge.registry.revoke(creds.device_id, time.time())
            # Nodes poll the shared revocation counter every revocation_poll (0.2 s here; 0.5 s by default).
            await until(client.disconnected.is_set, timeout=5, what="session dropped by node A")
            again = await b.connect(creds)
            assert not again.accepted
            await again.stop()
        finally:
            await client.stop()


async def test_a_key_rotation_on_one_node_ends_the_old_keys_session_on_the_other(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """A session opened with the old key on node B (a stolen key) lived on after the device rotated through node
    A and connected there with its new key; now it ends within a poll, and the new key's session stays."""
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", CountingIntegration()) as b,
    ):
        creds = await a.enroll()
        stolen = await b.connect(creds)
        try:
            assert stolen.accepted
            new, document = creds.rotated()
            assert (await a.post("/v1/rotate-key", document))[0] == 200
            device = await a.connect(new)  # the new key's first use
            try:
                assert device.accepted
                await until(stolen.disconnected.is_set, timeout=5, what="the old key's session on node B ended")
                assert device.accepted
                assert a.bridge.listener is not None
                assert a.bridge.listener.holds(creds.device_id)
            finally:
                await device.stop()
        finally:
            await stolen.stop()


async def test_a_token_and_an_enrollment_code_work_once_across_nodes(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", CountingIntegration()) as b,
    ):
        code = a.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
        keys = [public_key_pem(generate_private_key_pem()) for _ in range(6)]
        results = await asyncio.gather(*(h.post_enroll(code, k) for h, k in zip([a, b] * 3, keys, strict=True)))
        assert sorted(status for status, _ in results) == [201, 403, 403, 403, 403, 403]
        assert len(b.bridge.registry.all_devices()) == 1
        # One device's request sent to both nodes at once (its answer was lost, it asked again): one device,
        # and both answers name it.
        again = a.bridge.registry.create_code("acme", "boiler-9", 3600, time.time())
        key = public_key_pem(generate_private_key_pem())
        both = await asyncio.gather(a.post_enroll(again, key), b.post_enroll(again, key))
        assert [status for status, _ in both] == [201, 201]
        assert both[0][1]["device_id"] == both[1][1]["device_id"]
        assert len(b.bridge.registry.all_devices()) == 2

        creds = await a.enroll(name="boiler-8")
        token = creds.token()
        first = await a.connect(creds, password=token)
        replayed = await b.connect(creds, password=token)
        try:
            assert first.accepted
            assert not replayed.accepted
            assert b.bridge.metrics.connects_refused.labels("token_replayed")._value.get() == 1
        finally:
            await first.stop()
            await replayed.stop()
