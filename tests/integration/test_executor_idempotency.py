"""A retry that reaches a provider still working on the try before it, under the same Idempotency-Key: the executor
over a real SqliteLedger and the real http.request integration against a local HTTPS API that keeps keys as the
IETF draft (draft-ietf-httpapi-idempotency-key-header) and Stripe do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cloud_bridge.audit import AuditEvent
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.clocks import Clock
from tests.support.http_api import ENV, config, serve
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")


class KeyedApi:
    """Executes a request once per Idempotency-Key: the first starts the work (done once `release` is set), a
    request with a key whose work is under way is answered 409 Conflict, one whose work is done gets its answer."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.answers: list[int] = []
        self.release = asyncio.Event()
        self.work: dict[str, asyncio.Task[int]] = {}
        self.port = 0

    async def _execute(self, key: str) -> int:
        await self.release.wait()
        self.executed.append(key)
        return 201

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        key = request.headers["Idempotency-Key"]
        work = self.work.get(key)
        if work is None:
            work = self.work[key] = asyncio.create_task(self._execute(key))
        elif not work.done():
            self.answers.append(409)
            return web.json_response({"error": "a request with this key is being processed"}, status=409)
        status = await asyncio.shield(work)
        self.answers.append(status)
        return web.json_response({"ok": True}, status=status)


@pytest.fixture
async def api(server_cert_files: dict[str, Path]) -> AsyncIterator[KeyedApi]:
    keyed = KeyedApi()
    runner = await serve(keyed, server_cert_files["cert"], server_cert_files["key"])
    yield keyed
    keyed.release.set()
    await asyncio.gather(*keyed.work.values())
    await runner.cleanup()


async def test_a_409_to_the_retry_of_a_try_left_unanswered_is_retried_and_delivered_once(
    api: KeyedApi, server_cert_files: dict[str, Path], tmp_path: Path
) -> None:
    """The first try timed out while the provider worked on it; the retry, with the same key, came while that
    work was under way and got 409 Conflict, which ended the intent `failed`/`http_409` for good: the app was told
    it failed of a request the provider then carried out."""
    http = HttpIntegration.from_config({**config(api.port, server_cert_files["ca"]), "timeout": 0.2}, ENV)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    clock, finals = Clock(), list[Ack]()

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)

    executor = Executor(ledger, {"http.request": http}, on_final=on_final, now=clock, rand=lambda: 1.0)
    try:
        payload = {"credential": "crm", "method": "POST", "path": "/payments", "json": {"cents": 500}}
        envelope = Envelope("i-1", "hvac-ui", "http.request", int(clock.t * 1000), None, 1, payload)
        await admit(ledger, DEV, [envelope], lambda _: Decision(True), clock.t)
        assert await executor.run_due() == 1  # timed out: the provider is still at it
        clock.t += 1.0
        assert await executor.run_due() == 1  # 409: the key's request is still being processed
        assert finals == []
        api.release.set()
        await asyncio.gather(*api.work.values())
        clock.t += 2.0
        assert await executor.run_due() == 1  # the key's stored answer
        history = await ledger.audit("dev-1")
    finally:
        await http.aclose()
        await ledger.close()
    assert api.executed == ["dev-1:i-1:1"]  # carried out once
    assert sorted(api.answers) == [201, 201, 409]  # the first try's 201 went to a client that had given up
    (final,) = finals
    assert (final.state, final.code, final.detail) == (AckState.DELIVERED, "", "HTTP 201")
    assert [(r.event, r.code) for r in history] == [
        (AuditEvent.ACCEPT, ""),
        (AuditEvent.RETRY, "http_timeout"),
        (AuditEvent.RETRY, "http_409"),
        (AuditEvent.DELIVER, ""),
    ]


async def test_a_409_to_a_first_try_still_fails_at_once(
    api: KeyedApi, server_cert_files: dict[str, Path], tmp_path: Path
) -> None:
    """A conflict the provider sees in the request itself (nothing of ours under way) is the intent's: not retried."""
    http = HttpIntegration.from_config(config(api.port, server_cert_files["ca"]), ENV)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    clock, finals = Clock(), list[Ack]()

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)

    executor = Executor(ledger, {"http.request": http}, on_final=on_final, now=clock, rand=lambda: 1.0)
    api.work["dev-1:i-1:1"] = asyncio.create_task(api._execute("other"))  # the key is busy: a 409 at once
    try:
        payload = {"credential": "crm", "method": "POST", "path": "/payments"}
        envelope = Envelope("i-1", "hvac-ui", "http.request", int(clock.t * 1000), None, 1, payload)
        await admit(ledger, DEV, [envelope], lambda _: Decision(True), clock.t)
        assert await executor.run_due() == 1
    finally:
        await http.aclose()
        await ledger.close()
    (final,) = finals
    assert (final.state, final.code) == (AckState.FAILED, "http_409")
