"""An intent with a deadline whose provider took it without answering in time: the executor over a real
SqliteLedger and the real http.request integration against a local HTTPS API that holds its answers."""

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


class HoldingApi:
    """Takes every request (records its Idempotency-Key) and answers none until `release` is set."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.release = asyncio.Event()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.keys.append(request.headers["Idempotency-Key"])
        await self.release.wait()
        return web.json_response({"ok": True}, status=201)


@pytest.fixture
async def api(server_cert_files: dict[str, Path]) -> AsyncIterator[HoldingApi]:
    holding = HoldingApi()
    runner = await serve(holding, server_cert_files["cert"], server_cert_files["key"])
    yield holding
    holding.release.set()
    await runner.cleanup()


async def test_an_intent_that_expires_after_a_try_without_an_answer_says_it_may_have_reached_the_provider(
    api: HoldingApi, server_cert_files: dict[str, Path], tmp_path: Path
) -> None:
    """Its first try timed out (the provider had the request) and its retry came after its deadline (a backlog, a
    bridge down meanwhile): the app heard `expired`, "expired before it ran", and took it for never sent, when the
    provider may have acted on it. Now the detail says how its last try ended, as an operator's cancel does."""
    section = {**config(api.port, server_cert_files["ca"]), "timeout": 0.2}
    http = HttpIntegration.from_config(section, ENV)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    clock, finals = Clock(), list[Ack]()

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)

    executor = Executor(ledger, {"http.request": http}, on_final=on_final, now=clock, rand=lambda: 1.0)
    try:
        payload = {"credential": "crm", "method": "POST", "path": "/valves/3/close"}
        deadline = int((clock.t + 60) * 1000)
        envelope = Envelope("i-1", "hvac-ui", "http.request", int(clock.t * 1000), deadline, 1, payload)
        await admit(ledger, DEV, [envelope], lambda _: Decision(True), clock.t)
        assert await executor.run_due() == 1
        assert finals == []  # http_timeout: retried, due in a second
        clock.t += 120  # its retry is claimed only after its deadline
        assert await executor.run_due() == 1
        history = await ledger.audit("dev-1")
    finally:
        await http.aclose()
        await ledger.close()
    assert api.keys == ["dev-1:i-1:1"]  # the provider had it once, and was not called after the deadline
    (final,) = finals
    assert (final.state, final.code) == (AckState.EXPIRED, "expired")
    assert final.detail == (
        "expired before its next try; its last try ended http_timeout: it may have reached the provider"
    )
    assert [(r.event, r.code) for r in history] == [
        (AuditEvent.ACCEPT, ""),
        (AuditEvent.RETRY, "http_timeout"),
        (AuditEvent.EXPIRE, "expired"),
    ]
