"""Intents end to end over TLS: acks, replay safety, confirms, resend on resubscribe, hostile messages."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from msgspec.structs import replace as struct_replace

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.node import Bridge
from cloud_bridge.service import INLINE_JUDGE_BYTES
from cloud_bridge.settings import HostPort
from intent_contract.codec import Envelope, encode_batch, encode_confirms
from tests.support.bridge import (
    CountingIntegration,
    Harness,
    counting,
    email,
    harness,
    make_settings,
    refused_alone,
    until,
)
from tests.support.net import free_port

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

    async def all_confirmed() -> bool:
        return not await harness.bridge.ledger.unconfirmed(creds.device_id)

    await until(all_confirmed, timeout=10, what="results confirmed")
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
        await until(lambda: "delivered" in client.states().get("s-3", []), what="s-3 delivered")
    finally:
        await client.stop()
    sent = {
        state: harness.bridge.metrics.registry.get_sample_value("bridge_acks_total", {"state": state})
        for state in ("accepted", "rejected", "delivered")
    }
    assert sent == {"accepted": 1.0, "rejected": 2.0, "delivered": 1.0}


async def test_times_past_what_the_ledger_stores_are_rejected_and_the_rest_of_the_batch_goes_on(
    harness: Harness, counting: CountingIntegration
) -> None:
    # msgpack carries integers to 2**64 - 1; the ledgers' (SQLite, PostgreSQL bigint) stop at 2**63 - 1.
    # The schema's bound is 2**53 - 1.
    late = [struct_replace(email("t-1"), created=2**63), struct_replace(email("t-2"), expires=2**64 - 1)]
    late += [struct_replace(email("t-3"), expires=2**53)]
    items = [e.to_wire() for e in [*late, email("t-4"), struct_replace(email("t-5"), expires=2**53 - 1)]]
    await refused_alone(harness, counting, items, [e.id for e in late], ["t-4", "t-5"])


async def test_a_control_character_in_a_mail_header_is_rejected_at_admission(
    harness: Harness, counting: CountingIntegration
) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        client.send([email("c-1", subject="Alarm\x00Bcc: x@evil.example"), email("c-2")])
        await until(lambda: "delivered" in client.states().get("c-2", []), what="the clean one delivered")
        ack = next(a for a in client.acks if a.id == "c-1")
        assert (ack.state, ack.code) == ("rejected", "schema_violation")
        assert [job.intent_id for job in counting.calls] == ["c-2"]
    finally:
        await client.stop()


async def test_a_batch_of_another_wire_version_is_rejected_not_dropped(
    harness: Harness, counting: CountingIntegration
) -> None:
    def unsupported() -> float:
        sample = harness.bridge.metrics.registry.get_sample_value(
            "bridge_batches_total", {"outcome": "unsupported_version"}
        )
        return sample or 0.0

    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        client.publish("intents", msgpack.packb({"v": 2, "items": [email("v-1").to_wire(), email("v-2").to_wire()]}))
        await until(lambda: {"v-1", "v-2"} <= set(client.states()), what="rejections")
        assert sorted((a.id, a.state, a.code) for a in client.acks) == [
            ("v-1", "rejected", "unsupported_version"),
            ("v-2", "rejected", "unsupported_version"),
        ]
        assert "wire version 2 is not supported" in client.acks[0].detail
        # Nothing in it can be named: no ack can answer it, the bridge counts and logs it instead.
        client.publish("intents", msgpack.packb({"v": 3, "opaque": b"..."}))
        await until(lambda: unsupported() == 2, what="the second refusal counted")
        client.send([email("v-3")])  # the session goes on
        await until(lambda: "delivered" in client.states().get("v-3", []), what="a v1 batch delivered")
        assert set(client.states()) == {"v-1", "v-2", "v-3"}
        assert [job.intent_id for job in counting.calls] == ["v-3"]
    finally:
        await client.stop()


async def test_binary_values_in_an_envelope_are_rejected_and_the_rest_of_the_batch_goes_on(
    harness: Harness, counting: CountingIntegration
) -> None:
    # msgpack has a binary type that JSON, and the schema check, do not: in a payload value, a key, the id.
    in_value, in_key, as_id = email("b-1").to_wire(), email("b-2").to_wire(), email("b-3").to_wire()
    in_value["payload"]["subject"] = b"Alarm"
    in_key["payload"][b"cc"] = "ops@example.com"
    as_id["id"] = b"b-3"
    acks = await refused_alone(
        harness, counting, [in_value, in_key, as_id, email("b-4").to_wire()], ["b-1", "b-2"], ["b-4"]
    )
    assert "#2" not in acks  # an entry with no readable id is reported by its index, not acked


async def test_nan_and_infinities_in_a_payload_are_rejected_before_policy(
    harness: Harness, counting: CountingIntegration
) -> None:
    # msgpack floats JSON has no word for, in http.request's free-form `json` (the schema takes any value).
    odd = [
        Envelope(f"f-{n}", "app", "http.request", int(time.time() * 1000), None, 1,
                 {"credential": "crm", "method": "POST", "path": "/hook", "json": {"v": value}})
        for n, value in enumerate([float("nan"), float("inf"), -float("inf")])
    ]  # fmt: skip
    items = [e.to_wire() for e in [*odd, email("f-ok")]]
    acks = await refused_alone(harness, counting, items, [e.id for e in odd], ["f-ok"])
    assert all("not JSON data" in acks[e.id].detail for e in odd)


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


async def test_small_batches_are_judged_on_the_event_loop_and_large_ones_in_a_thread(harness: Harness) -> None:
    service = harness.bridge.service
    assert service is not None
    judged: dict[str, int] = {}
    judge = service._judge

    def spy(device: Any, data: bytes, now: float) -> Any:
        batch, requests = judge(device, data, now)
        judged[batch.envelopes[0].id] = threading.get_ident()
        return batch, requests

    service._judge = spy  # type: ignore[method-assign]
    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        small = encode_batch([email(f"s-{i}") for i in range(20)])
        large = encode_batch([email(f"l-{i}") for i in range(200)])
        assert len(small) <= INLINE_JUDGE_BYTES < len(large)
        client.publish("intents", small)
        client.publish("intents", large)
        await until(lambda: len(client.states()) == 220, what="220 acks", timeout=60)
        assert judged["s-0"] == threading.get_ident()  # the test's loop is the bridge's
        assert judged["l-0"] != threading.get_ident()
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


async def test_an_idle_bridge_claims_a_batch_in_the_admitting_transaction(
    harness: Harness, counting: CountingIntegration, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service offers the idle executor's slots to the admission: the batch's rows run without a claim
    of their own (one ledger commit less before the provider call), each once."""
    ledger, executor = harness.bridge.ledger, harness.bridge.executor
    assert executor is not None
    by_claim: list[str] = []
    claim = ledger.claim

    async def recording_claim(*args: Any, **kwargs: Any) -> list[LedgerEntry]:
        rows = await claim(*args, **kwargs)
        by_claim.extend(e.intent_id for e in rows)
        return rows

    monkeypatch.setattr(ledger, "claim", recording_claim)

    def idle() -> bool:  # the executor has looked and found nothing waiting (the offer is given back)
        offer = executor.offer("acme")
        if offer is not None:
            executor.release(offer)
        return offer is not None

    creds = await harness.enroll()
    client = await harness.connect(creds)
    try:
        await until(idle, what="an idle executor")
        client.send([email("c-1"), email("c-2")])
        await until(lambda: all("delivered" in client.states().get(i, []) for i in ("c-1", "c-2")), what="delivered")
        assert sorted(job.intent_id for job in counting.calls) == ["c-1", "c-2"]
        assert by_claim == []
    finally:
        await client.stop()
