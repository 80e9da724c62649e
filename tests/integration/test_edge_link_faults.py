"""The forwarder's link to a real bridge on loopback TLS when the edge's side goes wrong: its clock steps.

Counted at the bridge's integration: every intent executed once, none lost."""

import asyncio
import dataclasses
import json
import time
from pathlib import Path

from edge_outbox import forward_ops, ops
from edge_outbox.enroll_client import enroll
from edge_outbox.forward_wire import LinkState
from edge_outbox.forwarder import Forwarder
from edge_outbox.health import problems
from edge_outbox.identity import load_identity
from edge_outbox.intake_rules import admit
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from tests.support.bridge import CountingIntegration, Harness, counting, harness
from tests.support.edge import stored_ids
from tests.support.net import free_port, until

__all__ = ["counting", "harness"]  # fixtures

EMAIL = {"to": "ops@example.com", "subject": "Alarm", "text": "Boiler 3 hot"}
HOURS_3_MS = 3 * 3600 * 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_intents_sent_before_the_clock_stepped_back_go_again(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    """A batch went out, the link died before the bridge had it, and the edge's clock stepped back by hours (a
    reboot with a flat RTC battery; a site without NTP, the case the learned bridge clock is for). Its intents
    were due again only once this clock passed the time they were sent at: hours (years, from 2000) later."""
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    store = Store(edge_dir)
    await store.start()
    try:
        for n in range(20):
            decision = admit("outbox/app/email.send", json.dumps({**EMAIL, "id": f"s{n}"}).encode(), now_ms(), str)
            await store.call(ops.commit_intake, decision, QueueLimits(), now_ms())
        # What the forwarder does before a batch goes out; the batch never reached the bridge.
        taken = await store.call(
            forward_ops.take_batch, limit=20, max_bytes=1 << 20, sent_before=now_ms(), now=now_ms()
        )
        assert len(taken) == 20
        identity = load_identity(edge_dir)
        assert identity is not None
        forwarder = Forwarder(store, edge_dir, identity, ForwarderSettings(), lambda: now_ms() - HOURS_3_MS)
        task = asyncio.create_task(forwarder.run())
        try:
            await until(lambda: set(stored_ids(edge_dir).values()) == {"delivered"}, timeout=60, what="all delivered")
            assert sorted(j.intent_id for j in counting.calls) == sorted(f"s{n}" for n in range(20))
        finally:
            forwarder.request_stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await store.close()


async def test_an_unreachable_bridge_is_one_outage_through_its_reconnect_attempts(
    tmp_path: Path, harness: Harness
) -> None:
    """Each reconnect attempt (connecting, then offline again) restarted the link's `since`, by which /healthz,
    `edge-outbox status` and the fleet report judge the link: an outage never lasted longer than the backoff
    (at most 60 s), so no --max-offline above it ever said the bridge was unreachable, however long it was."""
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    identity = load_identity(edge_dir)
    assert identity is not None
    gone = dataclasses.replace(identity, mqtt_port=free_port())  # the bridge moved; nothing listens here
    store = Store(edge_dir)
    await store.start()
    settings = ForwarderSettings(backoff_base_s=0.01, backoff_cap_s=0.05)
    forwarder = Forwarder(store, edge_dir, gone, settings, now_ms)
    down_since = forwarder.snapshot().since  # the link was never up: down since the forwarder began
    task = asyncio.create_task(forwarder.run())
    try:
        await until(lambda: forwarder.snapshot().failures >= 5, what="five failed attempts")
        link = forwarder.snapshot()
        assert link.state in (LinkState.OFFLINE, LinkState.CONNECTING) and link.since == down_since
        later = link.since + 61_000
        found = problems(
            link_state=link.state.value, link_since_ms=link.since, intake_held_since_ms=None, intake_reason="",
            now_ms=later, max_offline_s=60,
        )  # fmt: skip
        assert found == ["no link to the bridge for 61 s (more than 60 s)"]
    finally:
        forwarder.request_stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
