"""Intents end to end over TLS: acks, replay safety, confirms, resend on resubscribe, hostile messages."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import msgpack

from cloud_bridge.service import Bridge
from cloud_bridge.settings import HostPort
from intent_contract.codec import encode_batch, encode_confirms
from tests.helpers import free_port
from tests.integration.test_bridge_harness import (
    CountingIntegration,
    Harness,
    counting,
    email,
    harness,
    make_settings,
    until,
)

__all__ = ["counting", "harness"]


async def test_batch_is_accepted_then_delivered(harness: Harness, counting: CountingIntegration) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        client.send([email("a-1"), email("a-2")])
        await until(lambda: {"a-1", "a-2"} <= set(client.states()), what="acks")
        await until(lambda: all("delivered" in s for s in client.states().values()), what="delivered")
        assert client.states()["a-1"][0] == "accepted"
        assert sorted(job.intent_id for job in counting.calls) == ["a-1", "a-2"]
        assert counting.calls[0].overrides == {"from": "alerts@acme.example"}
    finally:
        await client.stop()


async def test_replayed_batch_causes_no_extra_provider_calls(harness: Harness, counting: CountingIntegration) -> None:
    creds = await harness.enroll()
    batch = [email("r-1"), email("r-2")]
    client = await harness.connect(creds)
    client.send(batch)
    await until(lambda: len(counting.calls) == 2, what="two provider calls")
    await until(lambda: sum("delivered" in s for s in client.states().values()) == 2, what="final acks")
    client.send(batch)  # the same batch again, same session
    await until(lambda: len(client.states()["r-1"]) >= 3, what="duplicate ack")
    await client.stop()
    client = await harness.connect(creds)  # and again after a reconnect
    client.send(batch)
    await until(lambda: "r-2" in client.states(), what="ack after reconnect")
    await client.stop()
    assert sorted(job.intent_id for job in counting.calls) == ["r-1", "r-2"]
    assert client.states()["r-2"][-1] == "delivered"  # duplicates are acked with their final state


async def test_unconfirmed_results_are_resent_on_resubscribe_until_confirmed(
    harness: Harness, counting: CountingIntegration
) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    client.send([email("u-1"), email("u-2", subject="fail")])
    await until(lambda: len(counting.calls) == 2, what="provider calls")
    await until(lambda: sum(len(s) for s in client.states().values()) == 4, what="accepted + final acks")
    await client.stop()

    client = await harness.connect(creds)
    await until(lambda: set(client.states()) == {"u-1", "u-2"}, what="resent results")
    assert client.states() == {"u-1": ["delivered"], "u-2": ["failed"]}
    assert [a.code for a in client.acks if a.id == "u-2"] == ["test_refused"]
    client.publish("confirms", encode_confirms(["u-1", "u-2"]))
    for _ in range(500):
        if not await harness.bridge.ledger.unconfirmed(creds.device_id):
            break
        await asyncio.sleep(0.02)
    assert await harness.bridge.ledger.unconfirmed(creds.device_id) == []
    await client.stop()

    client = await harness.connect(creds)
    client.send([email("u-3")])  # a marker: its ack arrives after any resend would have
    await until(lambda: "delivered" in client.states().get("u-3", []), what="marker delivered")
    await client.stop()
    assert set(client.states()) == {"u-3"}


async def test_schema_violations_are_rejected_and_policy_applies(
    harness: Harness, counting: CountingIntegration
) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        bad = email("s-1").to_wire()
        bad["payload"] = {"to": ["ops@example.com"]}  # no subject
        outsider = email("s-2").to_wire()
        outsider["payload"]["to"] = ["someone@elsewhere.example"]
        client.publish("intents", msgpack.packb({"v": 1, "items": [bad, outsider, email("s-3").to_wire()]}))
        await until(lambda: {"s-1", "s-2", "s-3"} <= set(client.states()), what="acks")
        by_id = {a.id: a for a in client.acks}
        assert (by_id["s-1"].state, by_id["s-1"].code) == ("rejected", "schema_violation")
        assert (by_id["s-2"].state, by_id["s-2"].code) == ("rejected", "policy_recipient")
        await until(lambda: len(counting.calls) == 1, what="one provider call")
        assert counting.calls[0].intent_id == "s-3"
    finally:
        await client.stop()


def _huge_declared_array() -> bytes:
    # array32 header declaring 4 billion items, then nothing.
    return b"\x82\xa1v\x01\xa5items\xdd\xff\xff\xff\xff"


def _deep() -> bytes:
    nested: object = 1
    for _ in range(200):
        nested = [nested]
    return msgpack.packb({"v": 1, "items": [nested]})


async def test_hostile_messages_are_refused_quickly_while_others_get_acks(harness: Harness) -> None:
    attacker_creds, good_creds = await harness.enroll(name="attacker"), await harness.enroll(name="good")
    attacker = await harness.connect(attacker_creds)
    good = await harness.connect(good_creds)
    try:
        started = time.monotonic()
        hostile = [b"\x00" * ((1 << 20) + 10), _huge_declared_array(), _deep(), b"\xc1garbage", b"{}"]
        for _ in range(8):
            for data in hostile:
                attacker.publish("intents", data)
        for i in range(5):
            good.send([email(f"g-{i}")])
        await until(lambda: len(good.states()) == 5, what="good device acks")
        assert time.monotonic() - started < 10
        attacker.send([email("after-1")])  # the attacker's session survives its garbage
        await until(lambda: "after-1" in attacker.states(), what="attacker's own valid ack", timeout=20)
        assert not attacker.disconnected.is_set()
    finally:
        await attacker.stop()
        await good.stop()


async def test_batches_are_chunked_into_small_ack_messages(harness: Harness) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        client.publish("intents", encode_batch([email(f"c-{i}") for i in range(450)]))
        await until(lambda: len(client.states()) == 450, what="450 acks", timeout=60)
        assert max(client.acks_per_message) == 200  # 450 accepted acks in messages of at most 200
        assert max(client.message_sizes) < 1 << 20
    finally:
        await client.stop()


async def test_websocket_over_tls_listener(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    settings = replace(make_settings(tmp_path, server_cert_files), ws_listen=HostPort("127.0.0.1", free_port()))
    bridge = Bridge(settings, integrations={"email.send": counting})
    await bridge.start()
    h = Harness(bridge, settings, server_cert_files["ca"])
    try:
        creds = await h.enroll()
        client = await h.connect(creds, websocket=True)
        assert client.accepted
        client.send([email("ws-1")])
        await until(lambda: "delivered" in client.states().get("ws-1", []), what="delivered over websocket")
        await client.stop()
        refused = await h.connect(creds, password="not-a-token", websocket=True)
        assert not refused.accepted
        await refused.stop()
    finally:
        await bridge.stop()
