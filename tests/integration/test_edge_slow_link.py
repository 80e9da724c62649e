"""The forwarder's link to a real bridge on loopback TLS through a slow, late, flapping link (a rural cellular or
satellite site: a few KB/s, a second each way), `tests.support.slow_link.SlowLink`.

Counted at the bridge's integration: every intent executed once, none lost."""

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_outbox import forwarder as forwarder_module
from edge_outbox import ops
from edge_outbox.cli_format import report_problems
from edge_outbox.enroll_client import enroll
from edge_outbox.forward_wire import LinkSnapshot, LinkState
from edge_outbox.forwarder import Forwarder
from edge_outbox.health import problems
from edge_outbox.identity import Identity, load_identity
from edge_outbox.intake_rules import admit
from edge_outbox.lock import LINK_KEY
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from tests.support.bridge import CountingIntegration, Harness, counting, harness
from tests.support.edge import stored_ids
from tests.support.net import until
from tests.support.slow_link import SlowLink

__all__ = ["counting", "harness"]  # fixtures


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def enrolled(tmp_path: Path, harness: Harness) -> tuple[Path, Identity]:
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    identity = load_identity(edge_dir)
    assert identity is not None
    return edge_dir, identity


async def queue(store: Store, count: int, text_bytes: int) -> list[str]:
    ids = [f"s{n:03}" for n in range(count)]
    for intent_id in ids:
        body = {"to": "ops@example.com", "subject": "Daily log", "text": "x" * text_bytes, "id": intent_id}
        decision = admit("outbox/app/email.send", json.dumps(body).encode(), now_ms(), str)
        await store.call(ops.commit_intake, decision, QueueLimits(), now_ms())
    return ids


@contextlib.asynccontextmanager
async def forwarding(
    edge_dir: Path, identity: Identity, port: int, settings: ForwarderSettings, *, started: bool = True
) -> AsyncIterator[tuple[Store, Forwarder]]:
    """The outbox's store and a forwarder to the bridge through the link on `port` (running unless not `started`:
    then `forwarder.run()` is the test's to start), stopped and closed after the block."""
    store = Store(edge_dir)
    await store.start()
    forwarder = Forwarder(store, edge_dir, dataclasses.replace(identity, mqtt_port=port), settings, now_ms)
    tasks = [asyncio.create_task(forwarder.run())] if started else []
    try:
        yield store, forwarder
    finally:
        forwarder.request_stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


@pytest.mark.slow
async def test_a_backlog_drains_over_a_link_of_a_few_kb_a_second(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    """280 KB of mail queued while a site was away, then a link of 4 KB/s with 0.5 s each way. The forwarder sent it
    as one batch (up to 512 KiB) and waited 15 s for its PUBACK (aiomqtt's timeout), and paho gives up on a link
    whose PINGREQ, queued behind a packet still being written, is not answered within its keepalive (30 s, so
    a packet must be through in about a minute): the link was dropped mid-batch, the same batch sent again on the
    next, for ever; nothing drained, and the link's bandwidth went on resends."""
    edge_dir, identity = await enrolled(tmp_path, harness)
    async with (
        SlowLink(harness.mqtt_port, rate=4_000, delay_s=0.5) as link,
        forwarding(edge_dir, identity, link.port, ForwarderSettings(), started=False) as (store, forwarder),
    ):
        ids = await queue(store, 70, 4_000)
        task = asyncio.create_task(forwarder.run())

        def settled() -> bool:
            link_now = forwarder.snapshot()
            done = set(stored_ids(edge_dir).values()) == {"delivered"}
            return done or link_now.failures > 0 or link.connections > 1

        try:
            await until(settled, timeout=280, what="the backlog delivered, or the link dropped")
        finally:
            forwarder.request_stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert (forwarder.snapshot().failures, link.connections) == (0, 1)
        assert sorted(j.intent_id for j in counting.calls) == ids
        # Each intent went over the link once: the bytes carried are not much more than the payloads.
        assert link.up_bytes < 70 * 4_000 * 1.2


@pytest.mark.slow
async def test_every_intent_executed_once_through_a_link_that_drops_mid_frame(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    """A link of 20 KB/s, 0.3 s each way, dropped mid-frame five times (in the CONNECT, a batch, a confirm, ...)."""
    edge_dir, identity = await enrolled(tmp_path, harness)
    cuts = [700, 2_500, 6_000, 11_000, 24_000]
    async with SlowLink(harness.mqtt_port, rate=20_000, delay_s=0.3, cut_after=cuts) as link:
        settings = ForwarderSettings(backoff_base_s=0.05, backoff_cap_s=0.2)
        async with forwarding(edge_dir, identity, link.port, settings) as (store, forwarder):
            ids = await queue(store, 150, 300)
            forwarder.wake()
            await until(lambda: set(stored_ids(edge_dir).values()) == {"delivered"}, timeout=280, what="all delivered")
            assert link.cuts == len(cuts)
            assert sorted(j.intent_id for j in counting.calls) == ids


async def test_a_link_of_two_seconds_each_way_connects(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    edge_dir, identity = await enrolled(tmp_path, harness)
    async with (
        SlowLink(harness.mqtt_port, rate=10_000, delay_s=2.0) as link,
        forwarding(edge_dir, identity, link.port, ForwarderSettings()) as (store, forwarder),
    ):
        ids = await queue(store, 5, 300)
        forwarder.wake()

        def settled() -> bool:
            return set(stored_ids(edge_dir).values()) == {"delivered"} or forwarder.snapshot().failures > 0

        await until(settled, timeout=280, what="delivered, or a failed connect")
        assert forwarder.snapshot().error == ""
        assert forwarder.snapshot().failures == 0
        assert sorted(j.intent_id for j in counting.calls) == ids


async def test_a_link_that_connects_and_drops_mid_batch_every_time_is_unhealthy(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    """A link that connects, then drops before any batch is through, again and again (a cellular cell at its edge).
    The link was up now and then, so its outage never outlasted the reconnect backoff, and `status` and /healthz
    said healthy for as long as it went on, while nothing reached the bridge."""
    edge_dir, identity = await enrolled(tmp_path, harness)
    # Each connection carries its TLS handshake and CONNECT (about 1.3 KB), never a whole batch of these.
    async with SlowLink(harness.mqtt_port, rate=20_000, delay_s=0.2, cut_after=[2_000] * 1000) as link:
        settings = ForwarderSettings(backoff_base_s=0.05, backoff_cap_s=0.2)
        seen: list[LinkSnapshot] = []

        def up_after_drops() -> bool:
            seen.append(forwarder.snapshot())
            return link.cuts >= 3 and seen[-1].state is LinkState.CONNECTED

        async with forwarding(edge_dir, identity, link.port, settings) as (store, forwarder):
            await queue(store, 5, 3_000)
            forwarder.wake()
            await until(up_after_drops, timeout=120, what="the link up again after three drops")
            snapshot = seen[-1]
            assert counting.calls == []  # nothing got through
            assert snapshot.unanswered_since is not None
            later = snapshot.unanswered_since + 61_000
            found = problems(
                link_state=snapshot.state.value, link_since_ms=snapshot.since, intake_held_since_ms=None,
                intake_reason="", now_ms=later, max_offline_s=60, link_unanswered_since_ms=snapshot.unanswered_since,
            )  # fmt: skip
            assert found == [
                "the bridge has acknowledged nothing sent to it for 61 s (more than 60 s): the link connects but"
                " carries nothing through (the log says why each connection ended)"
            ]
            # `edge-outbox status` reads the same from what the running outbox records.
            live = {LINK_KEY: dataclasses.asdict(snapshot)}
            assert report_problems(live, 0.0, revoked=False)[0].startswith("the bridge has acknowledged nothing")


async def test_a_link_that_delivered_before_it_dropped_is_reconnected_at_the_first_backoff_step(
    tmp_path: Path, harness: Harness, counting: CountingIntegration, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconnect backoff counted every drop since the last token refresh (12 minutes), also of connections that
    delivered: over a link that drops every few minutes, each drop soon cost up to a minute's wait (60 s cap)."""
    steps: list[int] = []

    def backoff(failures: int, *, base: float, cap: float, jitter: float) -> float:
        steps.append(failures)
        return 0.05

    monkeypatch.setattr(forwarder_module, "compute_backoff", backoff)
    edge_dir, identity = await enrolled(tmp_path, harness)
    # Each connection carries about 30 KB before it drops: a few batches, acknowledged.
    async with (
        SlowLink(harness.mqtt_port, rate=100_000, delay_s=0.05, cut_after=[30_000] * 6) as link,
        forwarding(edge_dir, identity, link.port, ForwarderSettings()) as (store, forwarder),
    ):
        ids = await queue(store, 60, 3_000)
        forwarder.wake()
        await until(lambda: set(stored_ids(edge_dir).values()) == {"delivered"}, timeout=120, what="all delivered")
        assert link.cuts == 6
        assert sorted(j.intent_id for j in counting.calls) == ids
        assert steps == [1] * 6
