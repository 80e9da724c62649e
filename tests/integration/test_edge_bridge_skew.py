"""The forwarder when the bridge misbehaves (a bug, an older or newer version): it carries on, and what it
learns from a bad answer does not outlive the answer. A real bridge on loopback TLS, and a local HTTPS
server with the same certificate where the bridge itself cannot give the answer under test."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from edge_outbox import db, offline_ops
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import Identity, save_identity
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from intent_contract.device_token import generate_private_key_pem
from tests.support.bridge import Harness, counting, harness
from tests.support.http_api import Recorder, serve
from tests.support.net import until

__all__ = ["counting", "harness"]  # fixtures


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DeviceAnswers(Recorder):
    """`GET /v1/device` answered with a body of the test's choosing (`answer(now_ms)`), every request recorded."""

    def __init__(self, answer: Callable[[int], dict[str, object]]) -> None:
        super().__init__()
        self.answer = answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"method": request.method, "path": request.path_qs})
        return web.json_response(self.answer(now_ms()))


@pytest.fixture
async def far_off_time(server_cert_files: dict[str, Path]) -> AsyncIterator[DeviceAnswers]:
    # A bridge that writes its time in microseconds: 1,000 times the ms it should be, year 50,000 and more.
    recorder = DeviceAnswers(lambda now: {"device_id": "ghost-1", "status": "active", "time": now * 1000})
    runner = await serve(recorder, server_cert_files["cert"], server_cert_files["key"])
    try:
        yield recorder
    finally:
        await runner.cleanup()


async def test_a_bridge_time_centuries_off_is_not_learned_and_the_forwarder_carries_on(
    tmp_path: Path, harness: Harness, server_cert_files: dict[str, Path], far_off_time: DeviceAnswers
) -> None:
    # A device the bridge does not know: its CONNECT is refused, so the edge asks /v1/device (here, the local
    # server) whether it is revoked, and learns the bridge's time from the answer.
    edge_dir = tmp_path / "edge"
    answers = f"https://127.0.0.1:{far_off_time.port}"
    identity = Identity("ghost-1", "acme", "edge-1", "127.0.0.1", harness.mqtt_port, answers, "cloud-bridge")
    save_identity(edge_dir, identity, generate_private_key_pem(), server_cert_files["ca"], None)
    store = Store(edge_dir)
    await store.start()
    forwarder = Forwarder(store, edge_dir, identity, ForwarderSettings(backoff_base_s=0.05, backoff_cap_s=0.1), now_ms)
    task = asyncio.create_task(forwarder.run())
    try:
        # Before: the forwarder learned the offset, then died working out the time of day on it (ValueError:
        # year 55000 is out of range), and again at every start, as the offset was stored.
        await until(lambda: task.done() or len(far_off_time.requests) >= 3, what="the forwarder asked 3 times")
        assert not task.done(), task.exception()
    finally:
        forwarder.request_stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
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
