"""Fleet health at a real bridge (loopback TLS): old and new edges together, hostile reports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge import fleet_query, listener
from cloud_bridge.fleet import DiagnoseRequest
from cloud_bridge.settings import BridgeSettings
from cloud_bridge.store import open_store
from cloud_bridge.topic_acl import Access
from edge_outbox import ops
from edge_outbox.enroll_client import enroll
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import load_identity
from edge_outbox.intake_rules import admit
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from edge_outbox.windows import Window, parse_windows
from intent_contract.device_wire import Diagnosis, decode_diagnose, encode_diagnosis, encode_health
from intent_contract.wire import ACKS, CONFIRMS, DIAGNOSE, DIAGNOSIS, DIAGNOSIS_WINDOWS, HEALTH, INTENTS
from tests.support.bridge import (
    CountingIntegration,
    Harness,
    counting,
    email,
    harness,
    make_settings,
    running_bridge,
    until,
)
from tests.support.fleet import sample_report
from tests.support.stores import pg_database

__all__ = ["counting", "harness"]  # fixtures


async def _overview(h: Harness) -> dict[str, fleet_query.DeviceRow]:
    fleet = h.bridge.store.fleet
    rows = await asyncio.to_thread(fleet_query.overview, h.bridge.registry, fleet, now=time.time())
    return {r.device_id: r for r in rows}


async def test_an_edge_that_sends_no_reports_keeps_working_and_is_said_to_be_too_old_to_diagnose(
    harness: Harness, counting: CountingIntegration
) -> None:
    creds = await harness.enroll()
    old = await harness.connect(creds)  # subscribes to its acks only, as edges before fleet health do
    try:
        old.send([email("old-1")])
        await until(lambda: "delivered" in old.states().get("old-1", []), what="delivered to the old edge")

        async def connected() -> bool:
            found = (await _overview(harness)).get(creds.device_id)
            return found is not None and found.connected

        await until(connected, what="shown connected")
        row = (await _overview(harness))[creds.device_id]
        assert row.report is None and row.version is None and row.backlog is None and row.address == "127.0.0.1"
        result = await asyncio.to_thread(
            fleet_query.diagnose, harness.bridge.registry, harness.bridge.store.fleet, creds.device_id, timeout=15
        )
        assert result.outcome is fleet_query.Outcome.UNANSWERABLE
        assert result.request is not None and "older than this bridge" in result.request.detail
        assert len(counting.calls) == 1
    finally:
        await old.stop()


async def test_reports_for_another_device_unasked_diagnoses_and_floods_are_dropped(harness: Harness) -> None:
    alice, bob = await harness.enroll(name="alice"), await harness.enroll(name="bob")
    client = await harness.connect(alice)
    metrics = harness.bridge.metrics.registry

    def dropped(outcome: str) -> float:
        return metrics.get_sample_value("bridge_device_reports_total", {"outcome": outcome}) or 0.0

    try:
        fresh = dataclasses.replace(sample_report(), at=int(time.time() * 1000))
        client.publish(HEALTH, encode_health(fresh), device_id=bob.device_id)  # refused by the ACL
        client.publish(DIAGNOSE, b"\x80")  # bridge -> edge only
        client.publish(HEALTH, b"not msgpack")
        client.publish(DIAGNOSIS, encode_diagnosis(Diagnosis("never-asked", fresh, (), (), 1, "", "")))
        for _ in range(5):  # only the first of these within a second is taken
            client.publish(HEALTH, encode_health(fresh))
        await until(lambda: dropped("too_often") >= 4, what="the flood counted")
        assert (dropped("undecodable"), dropped("unasked"), dropped("health")) == (1, 1, 1)

        async def reported() -> bool:
            return (await _overview(harness))[alice.device_id].report is not None

        await until(reported, what="alice's report stored")
        rows = await _overview(harness)
        assert rows[alice.device_id].report == fresh and rows[bob.device_id].report is None
    finally:
        await client.stop()


@contextlib.asynccontextmanager
async def running_edge(
    tmp_path: Path, bridge: Harness, intents: int, windows: tuple[Window, ...] = ()
) -> AsyncIterator[tuple[Store, Forwarder]]:
    """An edge enrolled at `bridge` with `intents` queued, its forwarder running (health reports every 0.2 s)."""
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    await asyncio.to_thread(enroll, edge_dir, bridge.base_url, code, bridge.ca_file)
    identity = load_identity(edge_dir)
    assert identity is not None
    store = Store(edge_dir)
    await store.start()
    for n in range(intents):
        raw = json.dumps({"to": "ops@example.com", "subject": "Alarm", "text": "hot", "id": f"new-{n}"}).encode()
        now = time.time_ns() // 1_000_000
        await store.call(ops.commit_intake, admit("outbox/app/email.send", raw, now, lambda: "x"), QueueLimits(), now)
    settings = ForwarderSettings(health_interval_s=0.2, windows=windows)
    forwarder = Forwarder(store, edge_dir, identity, settings, lambda: time.time_ns() // 1_000_000)
    task = asyncio.create_task(forwarder.run())
    try:
        yield store, forwarder
    finally:
        forwarder.request_stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def delivered(store: Store, count: int) -> None:
    async def done() -> bool:
        return (await store.read(ops.summary)).counts["delivered"] == count

    await until(done, timeout=30, what=f"{count} intents delivered")


async def test_a_newer_edge_keeps_working_with_a_bridge_that_knows_no_fleet_topics(
    tmp_path: Path, harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def old_acl(device_id: str | None, topic: str, access: Access) -> bool:
        """The ACL of bridges before fleet health (intents and confirms; acks)."""
        parts = topic.split("/")
        if not device_id or len(parts) != 3 or parts[:2] != ["devices", device_id]:
            return False
        return parts[2] in (INTENTS, CONFIRMS) if access is Access.PUBLISH else parts[2] == ACKS

    monkeypatch.setattr(listener, "topic_allowed", old_acl)
    caplog.set_level(logging.INFO)
    async with running_edge(tmp_path, harness, 3) as (store, forwarder):
        await delivered(store, 3)

        def refused_reports() -> float:
            refused = harness.bridge.metrics.registry.get_sample_value(
                "bridge_topics_refused_total", {"action": "publish"}
            )
            return refused or 0.0

        await until(lambda: refused_reports() >= 3, what="reports sent and refused by the old bridge")
        assert forwarder.snapshot().connects == 1  # the link stayed up through them
        assert "does not ask for diagnoses" in caplog.text
        rows = await _overview(harness)
        assert [r.report for r in rows.values()] == [None]


async def test_a_diagnosis_is_asked_through_the_store_and_answered_by_the_node_holding_the_device(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    with pg_database() as url:
        nodes = [make_settings(tmp_path / n, server_cert_files, store=url, node_id=n) for n in ("node-a", "node-b")]
        async with contextlib.AsyncExitStack() as stack:
            a, b = [await stack.enter_async_context(_harness(settings, server_cert_files["ca"])) for settings in nodes]
            async with running_edge(tmp_path, b, 2) as (store, _forwarder):  # the edge connects to node B
                await delivered(store, 2)
                device_id = next(iter((await _overview(a)).keys()))

                async def held_by_b() -> bool:
                    return (await _overview(a))[device_id].node == "node-b"

                await until(held_by_b, what="node B holds the session, as seen from node A")
                # Asked from elsewhere (node A's store, as the CLI would): node B sends it on and stores the answer.
                result = await asyncio.to_thread(
                    fleet_query.diagnose, a.bridge.registry, a.bridge.store.fleet, device_id, timeout=15
                )
                assert result.outcome is fleet_query.Outcome.ANSWERED, result
                assert result.request is not None and result.request.node == "node-b"
                assert result.diagnosis is not None and result.diagnosis.health.counts["delivered"] == 2
                assert result.diagnosis.bridge == f"127.0.0.1:{b.mqtt_port}"


async def test_an_edge_with_more_forwarding_windows_than_a_diagnosis_carries_is_still_diagnosed(
    tmp_path: Path, harness: Harness
) -> None:
    """A site that may reach the bridge every half hour (48 windows, here chained over the whole day so that the
    link is up) answered every diagnose request with a diagnosis the bridge refused (at most 24 windows): counted
    `undecodable`, and `devices diagnose` waited its --timeout for "no answer" (exit 1)."""
    halves = [f"{m // 60:02d}:{m % 60:02d}-{(m + 30) // 60 % 24:02d}:{(m + 30) % 60:02d}" for m in range(0, 1440, 30)]
    async with running_edge(tmp_path, harness, 1, parse_windows(halves)) as (store, _forwarder):
        await delivered(store, 1)
        device_id = next(iter((await _overview(harness)).keys()))

        async def connected() -> bool:
            return (await _overview(harness))[device_id].connected

        await until(connected, what="the store shows the device connected")
        fleet = harness.bridge.store.fleet
        result = await asyncio.to_thread(fleet_query.diagnose, harness.bridge.registry, fleet, device_id, timeout=15)
    assert result.outcome is fleet_query.Outcome.ANSWERED, result
    assert result.diagnosis is not None
    windows = result.diagnosis.windows
    assert len(windows) == DIAGNOSIS_WINDOWS and windows[:-1] == tuple(halves[: DIAGNOSIS_WINDOWS - 1])
    assert windows[-1] == f"+{len(halves) - DIAGNOSIS_WINDOWS + 1} more"


async def test_a_diagnose_asked_from_a_machine_whose_clock_is_behind_is_sent_and_answered(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """`devices diagnose` on a machine whose clock is 90 s behind the nodes': its request was stored at that
    machine's time, every node took it as older than a minute (asked long ago, its asker gone) and never sent
    it, and the operator waited `--timeout` for "no answer" from a device that was connected and answering."""
    with pg_database() as url:
        settings = make_settings(tmp_path / "node-a", server_cert_files, store=url, node_id="node-a")
        async with _harness(settings, server_cert_files["ca"]) as a, running_edge(tmp_path, a, 1) as (store, _fw):
            await delivered(store, 1)
            device_id = next(iter((await _overview(a)).keys()))

            async def connected() -> bool:
                return (await _overview(a))[device_id].connected

            await until(connected, what="the edge shown connected")

            def behind() -> float:
                return time.time() - 90

            laptop = open_store(url, node="laptop", clock=behind)
            await laptop.open(migrate=False)
            try:
                result = await asyncio.to_thread(
                    fleet_query.diagnose, laptop.registry, laptop.fleet, device_id, timeout=15, clock=behind
                )
            finally:
                await laptop.close()
            assert result.outcome is fleet_query.Outcome.ANSWERED, result
            assert result.request is not None and result.request.node == "node-a"


@contextlib.asynccontextmanager
async def _harness(settings: BridgeSettings, ca: Path) -> AsyncIterator[Harness]:
    async for h in running_bridge(settings, ca, {"email.send": CountingIntegration()}):
        yield h


async def test_a_device_asked_before_it_subscribes_is_waited_for_not_called_too_old(harness: Harness) -> None:
    """Mid-reconnect: the device's session is here and it has reported its health, but its SUBSCRIBE to diagnose
    requests has not come yet. The node called it too old at once; now the request waits for it."""
    creds = await harness.enroll()
    client = await harness.connect(creds)  # subscribes to its acks only, so far
    fleet = harness.bridge.store.fleet
    topic = f"devices/{creds.device_id}/{DIAGNOSE}"
    try:
        client.publish(HEALTH, encode_health(dataclasses.replace(sample_report(), at=int(time.time() * 1000))))

        async def reported() -> bool:
            return (await _overview(harness))[creds.device_id].report is not None

        await until(reported, what="the report stored")

        def answer(_client: object, _userdata: object, message: Any) -> None:
            request_id = decode_diagnose(message.payload)
            client.publish(DIAGNOSIS, encode_diagnosis(Diagnosis(request_id, sample_report(), (), (), 1, "b", "mqtt")))

        client.mqtt.message_callback_add(topic, answer)
        asked = asyncio.create_task(
            asyncio.to_thread(fleet_query.diagnose, harness.bridge.registry, fleet, creds.device_id, timeout=30)
        )

        waiting: list[DiagnoseRequest] = []

        def judged() -> bool:  # the node has looked at the request: it waits (said in the row), or it answered
            waiting[:] = [r for r in fleet.pending(0.0) if r.detail]
            return bool(waiting) or asked.done()

        await until(lambda: asyncio.to_thread(judged), what="the node judged the request")
        assert not asked.done(), f"answered before the device subscribed: {asked.result()}"
        assert waiting[0].detail.startswith("waiting for the device to subscribe"), waiting
        client.mqtt.subscribe(topic, qos=1)  # the SUBSCRIBE arrives
        result = await asked
    finally:
        await client.stop()
    assert result.outcome is fleet_query.Outcome.ANSWERED, result
    assert result.diagnosis is not None and result.diagnosis.bridge == "b"


async def test_two_operators_diagnosing_one_device_at_once_both_get_its_diagnosis(harness: Harness) -> None:
    """The edge makes one diagnosis at a time and drops a request that arrives meanwhile; the second operator's
    `devices diagnose` then waited its whole timeout for nothing (exit 1), where docs/fleet.md said the CLI asks
    again (it never did). This device answers only the first of two requests, as a busy edge does."""
    creds = await harness.enroll()
    client = await harness.connect(creds)
    fleet = harness.bridge.store.fleet
    topic = f"devices/{creds.device_id}/{DIAGNOSE}"
    asked: list[str] = []
    try:
        client.mqtt.subscribe(topic, qos=1)
        client.publish(HEALTH, encode_health(dataclasses.replace(sample_report(), at=int(time.time() * 1000))))

        def on_request(_client: object, _userdata: object, message: Any) -> None:
            asked.append(decode_diagnose(message.payload))

        client.mqtt.message_callback_add(topic, on_request)

        def subscribed() -> bool:
            listener = harness.bridge.listener
            return listener is not None and listener.subscribed(creds.device_id, DIAGNOSE)

        await until(subscribed, what="the device subscribed to diagnose requests")

        async def connected() -> bool:  # as the store says (the node writes what it holds within a second)
            return (await _overview(harness))[creds.device_id].connected

        await until(connected, what="the store shows the device connected")

        def diagnose() -> fleet_query.DiagnoseResult:
            return fleet_query.diagnose(harness.bridge.registry, fleet, creds.device_id, timeout=8)

        first, second = (
            asyncio.create_task(asyncio.to_thread(diagnose)),
            asyncio.create_task(asyncio.to_thread(diagnose)),
        )
        await until(lambda: len(asked) == 2, what="both requests reached the device")
        answer = Diagnosis(asked[0], sample_report(), (), (), 1, "b", "mqtt")  # the second was dropped
        client.publish(DIAGNOSIS, encode_diagnosis(answer))
        results = await asyncio.gather(first, second)
    finally:
        await client.stop()
    assert [r.outcome for r in results] == [fleet_query.Outcome.ANSWERED] * 2, results
    assert sorted(r.diagnosis.request_id for r in results if r.diagnosis) == sorted(asked)
