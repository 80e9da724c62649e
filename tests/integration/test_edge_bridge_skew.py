"""The forwarder when the bridge misbehaves (a bug, an older or newer version): it carries on, and what it
learns from a bad answer does not outlive the answer. A real bridge on loopback TLS, and a local HTTPS
server with the same certificate where the bridge itself cannot give the answer under test."""

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from edge_outbox import db, offline_ops, ops
from edge_outbox.enroll_client import enroll
from edge_outbox.errors import PermanentError, TransientError
from edge_outbox.forward_wire import LinkState
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import Identity, key_file, save_identity
from edge_outbox.intake_rules import admit
from edge_outbox.key_rotation import rotate_online
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from intent_contract.codec import Ack, AckState, encode_acks, pack
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.bridge import Harness, counting, harness
from tests.support.http_api import Recorder, serve
from tests.support.net import until
from tests.support.scripted_bridge import ScriptedBridge

__all__ = ["counting", "harness"]  # fixtures


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Answers(Recorder):
    """Every request answered 200 with a JSON body of the test's choosing (`answer(now_ms)`), and recorded."""

    def __init__(self, answer: Callable[[int], dict[str, object]]) -> None:
        super().__init__()
        self.answer = answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path_qs})
        return web.json_response(self.answer(now_ms()))


@pytest.fixture
async def far_off_time(server_cert_files: dict[str, Path]) -> AsyncIterator[Answers]:
    # A bridge that writes its time in microseconds: 1,000 times the ms it should be, year 50,000 and more.
    recorder = Answers(lambda now: {"device_id": "ghost-1", "status": "active", "time": now * 1000})
    runner = await serve(recorder, server_cert_files["cert"], server_cert_files["key"])
    try:
        yield recorder
    finally:
        await runner.cleanup()


async def test_a_bridge_time_centuries_off_is_not_learned_and_the_forwarder_carries_on(
    tmp_path: Path, harness: Harness, server_cert_files: dict[str, Path], far_off_time: Answers
) -> None:
    # A device the bridge does not know: its CONNECT is refused, so the edge asks /v1/device (here, the local
    # server) whether it is revoked, and learns the bridge's time from the answer.
    edge_dir, identity = ghost_edge(tmp_path, harness, far_off_time, server_cert_files["ca"])
    # Before: the forwarder learned the offset, then died working out the time of day on it (ValueError: year
    # 55000 is out of range), and again at every start, as the offset was stored: it never asked a third time.
    await forwarding(edge_dir, identity, lambda: len(far_off_time.requests) >= 3, "the forwarder asked 3 times")
    conn = db.connect(edge_dir)
    try:
        assert offline_ops.bridge_clock(conn).offset_ms == 0
        # A clock stored by a version that believed such an answer is forgotten, not used.
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (db.CLOCK_KEY, json.dumps({"offset_ms": 10**15, "source": "x", "learned_at": 0})),
        )
        conn.commit()
        assert offline_ops.bridge_clock(conn).offset_ms == 0
    finally:
        conn.close()


async def test_a_revocation_is_taken_only_for_this_device(
    tmp_path: Path, harness: Harness, server_cert_files: dict[str, Path]
) -> None:
    # /v1/device answering with another device's record (a cache in front of the bridge that ignores the
    # Authorization header, say): "revoked", but not this device.
    others = Answers(lambda now: {"device_id": "other-device", "status": "revoked", "time": now})
    runner = await serve(others, server_cert_files["cert"], server_cert_files["key"])
    edge_dir, identity = ghost_edge(tmp_path, harness, others, server_cert_files["ca"])
    try:
        async with running(edge_dir, identity) as (store, forwarder, task):
            # Before: the first answer revoked this device for good (its backlog ended failed/device_revoked) and it
            # never asked again.
            await until(
                lambda: task.done() or len(others.requests) >= 3 or forwarder.snapshot().state is LinkState.REVOKED,
                what="the forwarder asked 3 times",
            )
            assert forwarder.snapshot().state is not LinkState.REVOKED
            assert await store.read(offline_ops.revocation, identity.device_id) is None
            # The same answer naming this device revokes it.
            others.answer = lambda now: {"device_id": "ghost-1", "status": "revoked", "time": now}
            await until(lambda: forwarder.snapshot().state is LinkState.REVOKED, what="revoked")
    finally:
        await runner.cleanup()


async def test_a_key_rotation_is_used_only_when_the_bridge_says_it_took_the_next_key(
    tmp_path: Path, harness: Harness, server_cert_files: dict[str, Path]
) -> None:
    # A 200 that does not say `next_key: accepted` for this device: a newer bridge's two-step rotation, say.
    pending = Answers(lambda now: {"device_id": "x", "next_key": "pending_approval", "time": now})
    runner = await serve(pending, server_cert_files["cert"], server_cert_files["key"])
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    real = await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    current = key_file(edge_dir).read_bytes()
    try:
        odd = dataclasses.replace(real, http_url=f"https://127.0.0.1:{pending.port}")
        pending.answer = lambda now: {"device_id": real.device_id, "next_key": "pending_approval", "time": now}
        with pytest.raises(TransientError, match="pending_approval"):
            await asyncio.to_thread(rotate_online, edge_dir, odd, now_ms())
        pending.answer = lambda now: {"device_id": "another-device", "next_key": "accepted", "time": now}
        with pytest.raises(TransientError, match="does not say it took the next key"):
            await asyncio.to_thread(rotate_online, edge_dir, odd, now_ms())
    finally:
        await runner.cleanup()
    # Before: it switched on the first 200, and signed with a key the bridge never took, its old one gone.
    assert key_file(edge_dir).read_bytes() == current
    assert len(pending.requests) == 2
    # The real bridge takes the same proposal: the device switches, and the bridge knows it by its new key.
    proposed = (edge_dir / "identity" / "next.key").read_bytes()
    await asyncio.to_thread(rotate_online, edge_dir, real, now_ms())
    assert key_file(edge_dir).read_bytes() == proposed
    device = await asyncio.to_thread(harness.bridge.registry.get, real.device_id)
    assert device is not None
    assert device.next_public_key == public_key_pem(proposed)


async def test_a_revoked_device_that_rotates_its_key_is_told_it_is_revoked(tmp_path: Path, harness: Harness) -> None:
    """Its rotation, signed with its own key, was answered "the rotation does not verify for this device": the
    operator looked for a damaged key. Only a caller that proved the key hears "revoked"; a forger does not."""
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    identity = await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    current = key_file(edge_dir).read_bytes()
    await asyncio.to_thread(harness.bridge.registry.revoke, identity.device_id, time.time())
    with pytest.raises(PermanentError, match=r"HTTP 403\): this device is revoked at the bridge") as refused:
        await asyncio.to_thread(rotate_online, edge_dir, identity, now_ms())
    assert "does not verify" not in str(refused.value)
    assert key_file(edge_dir).read_bytes() == current
    # The same proposal signed with another key than the device's: answered as for an unknown device.
    forged_dir = tmp_path / "forger"
    await asyncio.to_thread(save_identity, forged_dir, identity, generate_private_key_pem(), harness.ca_file, None)
    with pytest.raises(PermanentError, match="does not verify for this device"):
        await asyncio.to_thread(rotate_online, forged_dir, identity, now_ms())


@pytest.fixture
async def scripted(server_cert_files: dict[str, Path]) -> AsyncIterator[ScriptedBridge]:
    bridge = await ScriptedBridge("dev-1").start(server_cert_files["cert"], server_cert_files["key"])
    try:
        yield bridge
    finally:
        await bridge.stop()


@contextlib.asynccontextmanager
async def running(edge_dir: Path, identity: Identity) -> AsyncIterator[tuple[Store, Forwarder, asyncio.Task[None]]]:
    """A forwarder for `identity` on the store in `edge_dir`, running until the block ends."""
    store = Store(edge_dir)
    await store.start()
    settings = ForwarderSettings(ack_timeout_s=1.0, backoff_base_s=0.05, backoff_cap_s=0.1, health_interval_s=0)
    forwarder = Forwarder(store, edge_dir, identity, settings, now_ms)
    task = asyncio.create_task(forwarder.run())
    try:
        yield store, forwarder, task
    finally:
        forwarder.request_stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def forwarding(edge_dir: Path, identity: Identity, until_: Callable[[], object], what: str) -> None:
    """Run a forwarder for `identity` until `until_()` holds; it must still be running then."""
    async with running(edge_dir, identity) as (_store, _forwarder, task):
        await until(lambda: task.done() or until_(), what=what)
        assert not task.done(), task.exception()


def ghost_edge(tmp_path: Path, harness: Harness, answers: Answers, ca: Path) -> tuple[Path, Identity]:
    """An edge whose device the bridge does not know (its CONNECT is refused), asking `answers` over HTTPS."""
    edge_dir = tmp_path / "edge"
    url = f"https://127.0.0.1:{answers.port}"
    identity = Identity("ghost-1", "acme", "edge-1", "127.0.0.1", harness.mqtt_port, url, "cloud-bridge")
    save_identity(edge_dir, identity, generate_private_key_pem(), ca, None)
    return edge_dir, identity


def scripted_edge(tmp_path: Path, bridge: ScriptedBridge, ca: Path) -> tuple[Path, Identity]:
    edge_dir = tmp_path / "edge"
    identity = Identity(bridge.device_id, "acme", "edge-1", "127.0.0.1", bridge.port, "", "cloud-bridge")
    save_identity(edge_dir, identity, generate_private_key_pem(), ca, None)
    return edge_dir, identity


async def test_results_resent_at_every_reconnect_are_confirmed_once_each(
    tmp_path: Path, scripted: ScriptedBridge, server_cert_files: dict[str, Path]
) -> None:
    # The bridge re-sends its unconfirmed results at every subscribe, and here drops the link whenever a
    # confirms message arrives, before its PUBACK (a bridge failing on it, a link failing under the burst).
    results = 300
    ids = [f"r{n}" for n in range(results)]
    scripted.on_subscribe = [encode_acks([Ack(i, AckState.DELIVERED, "sent", "", now_ms()) for i in ids])]
    scripted.drop_on_confirms = True
    edge_dir, identity = scripted_edge(tmp_path, scripted, server_cert_files["ca"])
    await forwarding(edge_dir, identity, lambda: len(scripted.confirms) >= 4, "4 links, each confirming")
    # Before: a link that failed kept its ids to confirm and the next one added the re-sent results again,
    # a copy of them per reconnect (300, then 600, 900, ... ids), without bound while links failed so.
    assert [sorted(c) for c in scripted.confirms[:4]] == [sorted(ids)] * 4


async def test_confirms_say_which_attempts_results_they_confirm(
    tmp_path: Path, scripted: ScriptedBridge, server_cert_files: dict[str, Path]
) -> None:
    # Results of attempt 1, of attempt 3 (an operator retried twice at the bridge) and from a bridge that
    # does not say. A confirm without its attempt confirmed whatever the row held when it arrived: after an
    # operator's retry there, the new attempt's result, which the edge then never heard if the link failed.
    at = now_ms()
    scripted.on_subscribe = [
        encode_acks(
            [Ack(f"one{n}", AckState.FAILED, "smtp_550", "", at, attempt=1) for n in range(3)]
            + [Ack(f"three{n}", AckState.DELIVERED, "sent", "", at, attempt=3) for n in range(2)]
            + [Ack("unsaid", AckState.DELIVERED, "sent", "", at)]
        )
    ]
    edge_dir, identity = scripted_edge(tmp_path, scripted, server_cert_files["ca"])
    await forwarding(edge_dir, identity, lambda: sum(map(len, scripted.confirms)) >= 6, "6 confirmed")
    confirmed: dict[int | None, set[str]] = {}
    for ids, attempt in zip(scripted.confirms, scripted.confirm_attempts, strict=True):
        confirmed.setdefault(attempt, set()).update(ids)
    assert confirmed == {1: {"one0", "one1", "one2"}, 3: {"three0", "three1"}, None: {"unsaid"}}


async def test_an_ack_entry_this_edge_cannot_read_costs_only_itself(
    tmp_path: Path, scripted: ScriptedBridge, server_cert_files: dict[str, Path]
) -> None:
    # A newer bridge adds an ack state within version 1 (here "deferred", for the first intent of each batch)
    # and sends it in the same message as the other intents' acks.
    def answer(ids: list[str]) -> list[bytes]:
        at = now_ms()
        odd = {"id": ids[0], "state": "deferred", "code": "", "detail": "", "at": at}
        accepted = [Ack(i, AckState.ACCEPTED, at=at).to_wire() for i in ids]
        delivered = [Ack(i, AckState.DELIVERED, "sent", "", at).to_wire() for i in ids]
        return [pack({"v": 1, "acks": [odd, *accepted]}), pack({"v": 1, "acks": [odd, *delivered]})]

    scripted.on_batch = answer
    edge_dir, identity = scripted_edge(tmp_path, scripted, server_cert_files["ca"])
    store = Store(edge_dir)
    await store.start()
    try:
        for n in range(5):
            raw = json.dumps({"to": "ops@example.com", "subject": "Alarm", "text": "hot", "id": f"i{n}"}).encode()
            await store.call(
                ops.commit_intake, admit("outbox/app/email.send", raw, now_ms(), str), QueueLimits(), now_ms()
            )
    finally:
        await store.close()
    await forwarding(edge_dir, identity, lambda: stored_states(edge_dir) == {"delivered"}, "every intent delivered")
    # Before: the whole message was dropped for its one entry, nothing applied, and the batch sent again after
    # every ack timeout, for ever.
    assert scripted.batches == [[f"i{n}" for n in range(5)]]


def stored_states(edge_dir: Path) -> set[str]:
    conn = db.connect(edge_dir)
    try:
        return {state for (state,) in conn.execute("SELECT state FROM intents")}
    finally:
        conn.close()
