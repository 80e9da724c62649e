"""The forwarder against the real bridge, in process: resends on a live connection, batched confirms.

In-process so the ack timeout can be short: the real Outbox (embedded broker, store, forwarder) and
the real Bridge (listener, service, ledger, executor) on loopback TLS, with the bridge's documented
drop point (`BridgeService.submit` when a device's queue is full) made to drop the first batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.node import Bridge
from edge_outbox.enroll_client import enroll
from edge_outbox.runner import Outbox
from edge_outbox.settings import ForwarderSettings, OutboxSettings
from intent_contract.codec import decode_confirms
from tests.support.bridge import CountingIntegration, make_settings
from tests.support.edge import Client, email, stored_ids
from tests.support.net import free_port


@pytest.fixture
async def bridge(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> AsyncIterator[tuple[Bridge, CountingIntegration]]:
    counting = CountingIntegration()
    bridge = Bridge(make_settings(tmp_path / "bridge", server_cert_files), integrations={"email.send": counting})
    await bridge.start()
    try:
        yield bridge, counting
    finally:
        await bridge.stop()


@pytest.mark.timeout(60)
async def test_a_dropped_batch_is_resent_after_the_ack_timeout_on_the_same_connection(
    tmp_path: Path, server_cert_files: dict[str, Path], bridge: tuple[Bridge, CountingIntegration]
) -> None:
    b, counting = bridge
    assert b.service is not None
    service = b.service
    dropped: list[bytes] = []
    original = service.submit

    def drop_first_batch(device_id: str, leaf: str, data: bytes) -> None:
        if leaf == "intents" and not dropped:
            dropped.append(data)  # as when the device's queue is full: gone, no ack
            return
        original(device_id, leaf, data)

    service.submit = drop_first_batch  # type: ignore[method-assign]
    edge_dir = tmp_path / "edge"
    code = b.registry.create_code("acme", "edge-resend", 600, time.time())
    await asyncio.to_thread(
        enroll, edge_dir, f"https://127.0.0.1:{b.settings.http_listen.port}", code, server_cert_files["ca"]
    )
    port = free_port()
    outbox = Outbox(OutboxSettings(data_dir=edge_dir, listen_port=port, forwarder=ForwarderSettings(ack_timeout_s=1.0)))
    await outbox.start()
    app = Client(port, "resend-app")
    try:
        await asyncio.to_thread(app.connect)
        app.publish("outbox/hvac-ui/email.send", email("resend-1"), name="resend-1")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and stored_ids(edge_dir).get("resend-1") != "delivered":
            await asyncio.sleep(0.1)
        assert dropped, "the first batch never reached the bridge: the test proves nothing"
        assert outbox.forwarder is not None
        assert outbox.forwarder.snapshot().state == "connected"
        assert stored_ids(edge_dir).get("resend-1") == "delivered", "a dropped batch was never sent again"
        assert [job.intent_id for job in counting.calls] == ["resend-1"]
    finally:
        await asyncio.to_thread(app.close)
        await outbox.stop()


CONFIRM_COUNT = 500


@pytest.mark.timeout(120)
async def test_results_are_confirmed_in_few_messages(
    tmp_path: Path, server_cert_files: dict[str, Path], bridge: tuple[Bridge, CountingIntegration]
) -> None:
    """The bridge sends one message per result; the edge must not answer each with its own confirm,
    or the device's queue at the bridge overflows and intent batches are dropped too."""
    b, counting = bridge
    assert b.service is not None
    service = b.service
    seen: Counter[str] = Counter()
    confirmed: set[str] = set()
    original = service.submit

    def count(device_id: str, leaf: str, data: bytes) -> None:
        seen[leaf] += 1
        if leaf == "confirms":
            confirmed.update(decode_confirms(data))
        original(device_id, leaf, data)

    service.submit = count  # type: ignore[method-assign]
    edge_dir = tmp_path / "edge"
    code = b.registry.create_code("acme", "edge-confirms", 600, time.time())
    await asyncio.to_thread(
        enroll, edge_dir, f"https://127.0.0.1:{b.settings.http_listen.port}", code, server_cert_files["ca"]
    )
    port = free_port()
    outbox = Outbox(OutboxSettings(data_dir=edge_dir, listen_port=port))
    await outbox.start()
    app = Client(port, "confirms-app", inflight=200)
    intent_ids = [f"c-{n}" for n in range(CONFIRM_COUNT)]
    try:
        await asyncio.to_thread(app.connect)
        for intent_id in intent_ids:
            app.publish("outbox/hvac-ui/email.send", email(intent_id), name=intent_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(intent_ids) <= confirmed:
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(app.close)
        await outbox.stop()
    assert set(intent_ids) <= confirmed, "not every result was confirmed"
    assert len(counting.calls) == CONFIRM_COUNT
    assert seen["confirms"] <= CONFIRM_COUNT // 5, f"{seen['confirms']} confirm messages for {CONFIRM_COUNT} results"


FLOOD_COUNT = 2000


@pytest.mark.timeout(120)
async def test_a_slow_bridge_is_not_flooded_with_batches(
    tmp_path: Path, server_cert_files: dict[str, Path], bridge: tuple[Bridge, CountingIntegration]
) -> None:
    """Intents trickling in make many small batches; the edge must not send more than the bridge's
    per-device queue holds, or the bridge drops them and they wait for the ack timeout."""
    b, counting = bridge
    assert b.service is not None
    service = b.service
    original_judge = service.judge_intents

    async def slow_judge(device_id: str, data: bytes) -> Callable[[], Awaitable[list[Any]]]:
        admit = await original_judge(device_id, data)

        async def slow_admit() -> list[Any]:
            await asyncio.sleep(0.05)  # a loaded bridge: each batch takes a while to admit
            return await admit()

        return slow_admit

    service.judge_intents = slow_judge  # type: ignore[method-assign]
    edge_dir = tmp_path / "edge"
    code = b.registry.create_code("acme", "edge-flood", 600, time.time())
    await asyncio.to_thread(
        enroll, edge_dir, f"https://127.0.0.1:{b.settings.http_listen.port}", code, server_cert_files["ca"]
    )
    port = free_port()
    outbox = Outbox(OutboxSettings(data_dir=edge_dir, listen_port=port))
    await outbox.start()
    app = Client(port, "flood-app", inflight=20)
    intent_ids = [f"f-{n}" for n in range(FLOOD_COUNT)]
    try:
        await asyncio.to_thread(app.connect)
        for intent_id in intent_ids:
            app.publish("outbox/hvac-ui/email.send", email(intent_id), name=intent_id)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len({j.intent_id for j in counting.calls}) < FLOOD_COUNT:
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(app.close)
        await outbox.stop()
    assert len({j.intent_id for j in counting.calls}) == FLOOD_COUNT
    dropped = b.metrics.registry.get_sample_value("bridge_batches_total", {"outcome": "dropped_busy"})
    assert not dropped, f"the bridge dropped {dropped} messages of this device"
