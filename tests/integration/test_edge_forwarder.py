"""The forwarder against a real bridge on loopback TLS: enrollment, delivery, confirms, token refresh,
WebSocket transport, and the edge's ops view of the link."""

import asyncio
import dataclasses
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
import pytest
import trustme

from cloud_bridge.errors import PermanentError as BridgePermanentError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.settings import HostPort
from edge_outbox import db, ops
from edge_outbox.enroll_client import enroll
from edge_outbox.errors import PermanentError, TransientError
from edge_outbox.forward_wire import LinkState
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import key_file, load_identity
from edge_outbox.intake_rules import Admitted, admit
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.states import State
from edge_outbox.store import Store
from intent_contract.codec import Envelope
from intent_contract.device_token import public_key_pem
from tests.support.bridge import CountingIntegration, Creds, Harness, make_settings, running_bridge, until
from tests.support.edge import stored_ids
from tests.support.https_stub import https_losing_answers
from tests.support.net import free_port, sockets_to

EMAIL = {"to": "ops@example.com", "subject": "Alarm", "text": "Boiler 3 hot"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def counting() -> CountingIntegration:
    return CountingIntegration()


@pytest.fixture
async def bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> AsyncIterator[Harness]:
    settings = dataclasses.replace(
        make_settings(tmp_path / "bridge", server_cert_files), ws_listen=HostPort("127.0.0.1", free_port())
    )
    async for h in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield h


async def enrolled_edge(tmp_path: Path, bridge: Harness) -> Path:
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    await asyncio.to_thread(enroll, edge_dir, bridge.base_url, code, bridge.ca_file)
    return edge_dir


async def queue_intents(store: Store, count: int, prefix: str = "f") -> None:
    for n in range(count):
        raw = json.dumps({**EMAIL, "id": f"{prefix}{n}"}).encode()
        decision = admit("outbox/app/email.send", raw, now_ms(), lambda: "unused")
        await store.call(ops.commit_intake, decision, QueueLimits(), now_ms())


async def run_forwarder(edge_dir: Path, settings: ForwarderSettings) -> tuple[Store, Forwarder, asyncio.Task[None]]:
    store = Store(edge_dir)
    await store.start()
    identity = load_identity(edge_dir)
    assert identity is not None
    forwarder = Forwarder(store, edge_dir, identity, settings, now_ms)
    return store, forwarder, asyncio.create_task(forwarder.run())


async def test_enrollment_keeps_a_private_key_and_refuses_to_replace_it(tmp_path: Path, bridge: Harness) -> None:
    edge_dir = await enrolled_edge(tmp_path, bridge)
    identity = load_identity(edge_dir)
    assert identity is not None
    key = edge_dir / "identity" / "device.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    device = await asyncio.to_thread(bridge.bridge.registry.get, identity.device_id)
    assert device is not None
    assert "PRIVATE" not in device.public_key
    # the private key never left: the bridge only has the public half
    assert key.read_bytes().decode() not in json.dumps(device.public_key)
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_outbox",
            "enroll",
            "--data-dir",
            str(edge_dir),
            "--bridge",
            bridge.base_url,
            "--code",
            "x",
            "--ca",
            str(bridge.ca_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1
    assert f"already enrolled as device {identity.device_id}" in again.stderr
    assert load_identity(edge_dir) == identity


async def test_enrollment_errors_are_one_clear_line(tmp_path: Path, bridge: Harness) -> None:
    with pytest.raises(PermanentError, match=r"refused enrollment \(HTTP 403\)"):
        await asyncio.to_thread(enroll, tmp_path / "a", bridge.base_url, "not-a-code", bridge.ca_file)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", "edge-2", 600, time.time())
    with pytest.raises(PermanentError, match="certificate not signed by"):
        await asyncio.to_thread(enroll, tmp_path / "b", bridge.base_url, code, other_ca)
    assert load_identity(tmp_path / "b") is None


async def test_an_enrollment_whose_answer_was_lost_runs_again_with_the_same_code(
    tmp_path: Path, bridge: Harness, ca: trustme.CA
) -> None:
    """The bridge enrolled the device and its answer never came (a cut link, a timeout): the edge said "failed"
    and had thrown its key away, so running it again sent a new key with a spent code, 403, and the site could
    not enroll without a new code; the bridge kept a device nobody held the key of."""
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    with https_losing_answers(ca, bridge.base_url, bridge.ca_file, lose=1) as relay:
        with pytest.raises(TransientError, match="run it again"):
            await asyncio.to_thread(enroll, edge_dir, relay.url, code, bridge.ca_file)
        assert relay.statuses == [201]
        assert load_identity(edge_dir) is None
        identity = await asyncio.to_thread(enroll, edge_dir, relay.url, code, bridge.ca_file)
        assert relay.statuses == [201, 201]
    devices = await asyncio.to_thread(bridge.bridge.registry.all_devices)
    assert [d.device_id for d in devices] == [identity.device_id]
    assert devices[0].public_key.strip() == public_key_pem(key_file(edge_dir).read_bytes()).strip()
    assert not (edge_dir / "identity" / "enroll.pending").exists()  # the key is device.key now


async def test_a_code_pasted_with_whitespace_whose_answer_was_lost_runs_again_without_it(
    tmp_path: Path, bridge: Harness, ca: trustme.CA
) -> None:
    """The bridge takes a code with whitespace around it (pasted from a mail); the edge kept its key for the code as
    typed, so the same code typed again without the whitespace, after a lost answer, made a new key: 403."""
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    with https_losing_answers(ca, bridge.base_url, bridge.ca_file, lose=1) as relay:
        with pytest.raises(TransientError, match="run it again"):
            await asyncio.to_thread(enroll, edge_dir, relay.url, f" {code}\n", bridge.ca_file)
        identity = await asyncio.to_thread(enroll, edge_dir, relay.url, code, bridge.ca_file)
        assert relay.statuses == [201, 201]
    devices = await asyncio.to_thread(bridge.bridge.registry.all_devices)
    assert [d.device_id for d in devices] == [identity.device_id]


async def test_intents_are_delivered_confirmed_and_statuses_applied(
    tmp_path: Path, bridge: Harness, counting: CountingIntegration
) -> None:
    edge_dir = await enrolled_edge(tmp_path, bridge)
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings(batch_items=50))
    try:
        await queue_intents(store, 300)
        forwarder.wake()
        await until(lambda: set(stored_ids(edge_dir).values()) == {"delivered"}, timeout=60, what="all delivered")
        assert sorted(j.intent_id for j in counting.calls) == sorted(f"f{n}" for n in range(300))  # each executed once
        identity = load_identity(edge_dir)
        assert identity is not None
        # the edge confirmed every final result, so the bridge keeps nothing to re-send
        await until(lambda: forwarder.snapshot().acked >= 300, what="acks counted")

        async def all_confirmed() -> bool:
            return not await bridge.bridge.ledger.unconfirmed(identity.device_id)

        await until(all_confirmed, timeout=10, what="every result confirmed")
        assert forwarder.snapshot().state is LinkState.CONNECTED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_a_fault_of_the_forwarders_own_is_logged_and_it_starts_again(
    tmp_path: Path, bridge: Harness, counting: CountingIntegration, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged device key (a disk fault, a hand edit) made the token's signing raise ValueError, which ended
    the forwarder's task with nothing logged until the outbox stopped: intake went on, nothing was forwarded."""
    edge_dir = await enrolled_edge(tmp_path, bridge)
    key = key_file(edge_dir).read_bytes()
    key_file(edge_dir).write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    settings = ForwarderSettings(backoff_base_s=0.05, backoff_cap_s=0.2)
    with caplog.at_level(logging.ERROR, logger="edge_outbox.forwarder"):
        store, forwarder, task = await run_forwarder(edge_dir, settings)
        try:
            await queue_intents(store, 5)
            await until(lambda: task.done() or len(failures(caplog)) >= 2, what="the failure logged twice")
            assert not task.done(), task.exception()
            assert failures(caplog)[0].exc_info is not None
            last = forwarder.errors.last(now_ms())
            assert last is not None and last.code == "forwarder_failed"
            assert last.detail == "the forwarder failed: ValueError"
            key_file(edge_dir).write_bytes(key)  # repaired: the next start forwards, with no restart of the outbox
            await until(lambda: set(stored_ids(edge_dir).values()) == {"delivered"}, timeout=60, what="all delivered")
            assert sorted(j.intent_id for j in counting.calls) == [f"f{n}" for n in range(5)]
        finally:
            forwarder.request_stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("the forwarder failed")]


async def test_a_stored_payload_the_wire_cannot_carry_is_rejected_and_holds_nothing_up(
    tmp_path: Path, bridge: Harness, counting: CountingIntegration, caplog: pytest.LogCaptureFixture
) -> None:
    edge_dir = await enrolled_edge(tmp_path, bridge)
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings(batch_items=50))
    try:
        # Rows an older outbox's intake stored (today's refuses them): a lone surrogate, a number past the
        # float range. Committed as that intake did, between good intents of the same batch.
        await queue_intents(store, 3, prefix="before")
        for intent_id, body in [("lone", b'"\\ud800"'), ("huge", b"1e400")]:
            raw = (
                b'{"to": "ops@example.com", "subject": ' + body + b', "text": "x", "id": "' + intent_id.encode() + b'"}'
            )
            old = Admitted(intent_id, "app", "email.send", raw, 0, now_ms(), None, True)
            await store.call(ops.commit_intake, old, QueueLimits(), now_ms())
        await queue_intents(store, 3, prefix="after")
        forwarder.wake()
        good = {f"{p}{n}" for p in ("before", "after") for n in range(3)}
        await until(lambda: {i for i, s in stored_ids(edge_dir).items() if s == "delivered"} == good, what="good ones")
        conn = db.connect(edge_dir)
        try:
            rows = {i: ops.get(conn, i) for i in ("lone", "huge")}
        finally:
            conn.close()
        assert {(r.state, r.code) for r in rows.values()} == {(State.REJECTED, "bad_json")}
        assert all(r.detail.startswith("cannot be sent to the bridge: ") for r in rows.values())
        assert sorted(j.intent_id for j in counting.calls) == sorted(good)  # the bridge never saw the two
        assert "unsendable" in {line.code for line in forwarder.errors.lines(now_ms())}
        logged = [r.getMessage() for r in caplog.records if "cannot be sent to the bridge" in r.getMessage()]
        assert logged and all(("lone" in m or "huge" in m) for m in logged)  # the log names them
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_the_link_to_the_bridge_sends_small_packets_without_waiting(tmp_path: Path, bridge: Harness) -> None:
    """TCP_NODELAY on the edge's socket: with Nagle's algorithm (paho's default) a small batch written while
    the previous write's TCP ACK was outstanding waited up to 40 ms for the bridge's delayed ACK, the
    largest part of P5's p90 (bench/findings.md F18)."""
    edge_dir = await enrolled_edge(tmp_path, bridge)
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings())
    try:
        await until(lambda: forwarder.snapshot().state is LinkState.CONNECTED, timeout=30, what="the link")
        links = sockets_to(bridge.mqtt_port)
        try:
            assert links, "no socket of this process is connected to the bridge"
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in links)
        finally:
            for s in links:
                s.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_an_edge_speaking_another_wire_version_gets_its_intents_rejected(
    tmp_path: Path, bridge: Harness, counting: CountingIntegration, monkeypatch: pytest.MonkeyPatch
) -> None:
    def encode_v2(envelopes: list[Envelope]) -> bytes:
        return msgpack.packb({"v": 2, "items": [e.to_wire() for e in envelopes]})

    monkeypatch.setattr("edge_outbox.forward_wire.encode_batch", encode_v2)
    edge_dir = await enrolled_edge(tmp_path, bridge)
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings())
    try:
        await queue_intents(store, 3, "v")
        forwarder.wake()
        # Not resent forever: the bridge names each intent it cannot read and the edge ends them.
        await until(lambda: set(stored_ids(edge_dir).values()) == {"rejected"}, timeout=20, what="rejected at the edge")
        rows = [await store.call(ops.get, f"v{n}") for n in range(3)]
        assert {(r.code, r.attempt) for r in rows} == {("unsupported_version", 1)}
        assert "wire version 2 is not supported" in rows[0].detail
        assert counting.calls == []
        assert forwarder.snapshot().state is LinkState.CONNECTED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_token_refresh_reconnects_and_keeps_forwarding(
    tmp_path: Path, bridge: Harness, counting: CountingIntegration
) -> None:
    edge_dir = await enrolled_edge(tmp_path, bridge)
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings(token_lifetime_s=3))
    try:
        await queue_intents(store, 5, "early")
        forwarder.wake()
        await until(lambda: len(counting.calls) == 5, timeout=30, what="first intents")
        first_since = forwarder.snapshot().since
        # Past 80% of the 3 s token the forwarder closes the link and connects with a new token.
        await until(
            lambda: forwarder.snapshot().state is LinkState.CONNECTED and forwarder.snapshot().since > first_since,
            timeout=15,
            what="a new connection after the token refresh",
        )
        await queue_intents(store, 5, "late")
        forwarder.wake()
        await until(lambda: len(counting.calls) == 10, timeout=30, what="intents after the token refresh")
        assert forwarder.snapshot().since > first_since
        assert sorted(j.intent_id for j in counting.calls) == sorted(
            [f"early{n}" for n in range(5)] + [f"late{n}" for n in range(5)]
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_websocket_over_tls_transport(tmp_path: Path, bridge: Harness, counting: CountingIntegration) -> None:
    edge_dir = await enrolled_edge(tmp_path, bridge)
    assert bridge.settings.ws_listen is not None
    settings = ForwarderSettings(transport="websockets", websocket_port=bridge.settings.ws_listen.port)
    store, forwarder, task = await run_forwarder(edge_dir, settings)
    try:
        await queue_intents(store, 20, "ws")
        forwarder.wake()
        await until(
            lambda: stored_ids(edge_dir) and set(stored_ids(edge_dir).values()) == {"delivered"},
            timeout=30,
            what="delivered over WebSocket",
        )
        assert len(counting.calls) == 20
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_unreachable_bridge_backs_off_and_status_shows_the_link(tmp_path: Path, bridge: Harness) -> None:
    edge_dir = await enrolled_edge(tmp_path, bridge)
    await bridge.bridge.stop()
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings(backoff_base_s=0.1, backoff_cap_s=0.5))
    try:
        await queue_intents(store, 3)
        await until(lambda: forwarder.snapshot().state is LinkState.OFFLINE, timeout=20, what="offline")
        assert set(stored_ids(edge_dir).values()) == {State.ACCEPTED.value}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_status_shows_link_backlog_and_drain_estimate(
    tmp_path: Path, bridge: Harness, counting: CountingIntegration
) -> None:
    from edge_outbox.runner import Outbox
    from edge_outbox.settings import OutboxSettings
    from tests.support.edge import Client, cli_json, email

    edge_dir = await enrolled_edge(tmp_path, bridge)
    not_enrolled = tmp_path / "plain"
    db.connect(not_enrolled).close()
    assert (await asyncio.to_thread(cli_json, not_enrolled, "status"))["link"]["state"] == "not enrolled"

    port = free_port()
    outbox = Outbox(OutboxSettings(data_dir=edge_dir, listen_port=port, housekeeping_s=0.2))
    await outbox.start()
    app = await asyncio.to_thread(lambda: Client(port, "status-app").connect())
    try:
        await asyncio.to_thread(app.subscribe, "outbox/app/status/#")
        for n in range(50):
            app.publish("outbox/app/email.send", email(f"s{n}"), name=f"s{n}")
        await until(lambda: len(counting.calls) == 50, timeout=30, what="delivered")
        await until(lambda: all("delivered" in app.status_of(f"s{n}") for n in range(50)), what="statuses at app")

        async def status_when(ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            """`edge-outbox status --json` once the link record the outbox writes says `ready`."""
            seen: list[dict[str, Any]] = []

            async def poll() -> bool:
                seen[:] = [await asyncio.to_thread(cli_json, edge_dir, "status")]
                return ready(seen[0])

            await until(poll, timeout=20, what="the link record")
            return seen[0]

        status = await status_when(lambda s: "since" in s["link"])  # the outbox has recorded its link
        assert status["link"]["state"] == "connected"
        assert status["link"]["last_contact"] is not None
        assert status["pending"] == 0
        assert status["link"]["drain_s"] == 0.0
        await bridge.bridge.stop()  # the link goes down; a backlog builds up
        await until(
            lambda: outbox.forwarder is not None and outbox.forwarder.snapshot().state is not LinkState.CONNECTED,
            timeout=20,
            what="link down",
        )
        for n in range(5):
            app.publish("outbox/app/email.send", email(f"late{n}"), name=f"late{n}")
        await until(lambda: len(app.acked) == 55, what="PUBACKs while offline")
        status = await status_when(lambda s: s["link"]["state"] != "connected")
        assert status["link"]["state"] in ("offline", "connecting")
        assert status["pending"] == 5
        assert status["oldest_pending_age_s"] >= 0
    finally:
        await asyncio.to_thread(app.close)
        await outbox.stop()


class FailsFirstAttempt(CountingIntegration):
    """Refuses attempt 1 of every intent permanently, accepts later attempts."""

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job)
        if job.attempt == 1:
            raise BridgePermanentError("mailbox full", code="smtp_552")
        return Outcome("sent")


@pytest.fixture
def fails_first() -> FailsFirstAttempt:
    return FailsFirstAttempt()


async def test_ops_retry_runs_a_failed_intent_again_as_a_new_attempt(
    tmp_path: Path, server_cert_files: dict[str, Path], fails_first: FailsFirstAttempt
) -> None:
    settings = make_settings(tmp_path / "bridge", server_cert_files)
    edge_dir = tmp_path / "edge"
    async for bridge in running_bridge(settings, server_cert_files["ca"], {"email.send": fails_first}):
        assert await enrolled_edge(tmp_path, bridge) == edge_dir
        store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings())
        try:
            await queue_intents(store, 3, "r")
            forwarder.wake()
            await until(
                lambda: set(stored_ids(edge_dir).values()) == {"failed"}, timeout=30, what="first attempt failed"
            )
            failed = await store.call(ops.get, "r0")
            assert (failed.code, failed.attempt) == ("smtp_552", 1)
            # the operator retries: attempt 2 goes out and the bridge runs it again
            retried = await store.call(ops.retry_state, State.FAILED, now_ms())
            assert [r.attempt for r in retried] == [2, 2, 2]
            forwarder.wake()
            await until(
                lambda: set(stored_ids(edge_dir).values()) == {"delivered"}, timeout=20, what="retried delivered"
            )  # under the 30 s ack timeout
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()
    runs = sorted((job.intent_id, job.attempt) for job in fails_first.calls)
    assert runs == [("r0", 1), ("r0", 2), ("r1", 1), ("r1", 2), ("r2", 1), ("r2", 2)]


async def test_a_stop_that_lands_while_the_link_fails_stops_the_forwarder(
    tmp_path: Path, bridge: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation can come out of a failing link as the link's error (TaskGroup on 3.11, aiomqtt's
    exit); the forwarder must stop all the same, not go on reconnecting (seen when outbox and bridge
    got SIGTERM together)."""
    edge_dir = await enrolled_edge(tmp_path, bridge)
    connecting = asyncio.Event()

    async def link_that_turns_a_stop_into_its_error(_self: Forwarder) -> None:
        connecting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise aiomqtt.MqttError("disconnected during connect") from None

    monkeypatch.setattr(Forwarder, "_connection", link_that_turns_a_stop_into_its_error)
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings(backoff_base_s=0.01, backoff_cap_s=0.01))
    try:
        await asyncio.wait_for(connecting.wait(), 10)
        forwarder.request_stop()  # as Outbox.stop does
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done() and task.cancelled(), "the forwarder went on after it was stopped"
    finally:
        if not task.done():  # the old behaviour: it never ends; leave the test without waiting on it
            task.get_loop().call_soon(task.cancel)
        await store.close()


async def test_an_edge_whose_key_another_copy_rotated_says_so(tmp_path: Path, bridge: Harness) -> None:
    """A data dir restored from a backup (or cloned) after another copy of it rotated the key: every connect was
    refused and the edge said only "the bridge refused the connection", as for a passing fault."""
    edge_dir = await enrolled_edge(tmp_path, bridge)
    identity = load_identity(edge_dir)
    assert identity is not None
    other_copy = Creds(identity.device_id, key_file(edge_dir).read_bytes())
    rotated, document = other_copy.rotated()
    assert (await bridge.post("/v1/rotate-key", document))[0] == 200
    assert (await bridge.device_status(rotated))[0] == 200  # the other copy's new key, in use
    store, forwarder, task = await run_forwarder(edge_dir, ForwarderSettings(backoff_base_s=0.05, backoff_cap_s=0.2))
    try:

        def said() -> bool:
            last = forwarder.errors.last(now_ms())
            return last is not None and last.code == "key_replaced"

        await until(said, timeout=20, what="the edge saying its key was replaced")
        last = forwarder.errors.last(now_ms())
        assert last is not None and "enroll again" in last.detail
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
