"""A backlog against a rate-limited provider: the executor over a real SqliteLedger and the real http.request
integration against a local HTTPS API that takes RATE calls a second and answers the rest 429 with
`Retry-After: 1`.

Before December 2026 each 429 spent one of the intent's tries and nothing slowed the other rows: every row
due called, so the provider got hundreds of calls a second it refused, and an intent still waiting when its
tries ran out ended `failed`/`http_429`. Now a 429 is not the intent's try (provider_pause.py) and it pauses
the pool: after one, only the calls already under way reach the provider before the time it gave.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cloud_bridge.executor import Executor
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.http_api import ENV, config, serve
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")
INTENTS = 200
RATE = 40  # calls the provider takes per second (each second from its start), the rest answered 429
SLOTS = 8  # http.request's concurrency: the calls that can be under way when a 429 comes back


class LimitedApi:
    """Takes RATE calls in each second, counted from its first call; answers the others 429, Retry-After: 1."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.taken: Counter[str] = Counter()  # by Idempotency-Key: the intent carried out
        self.calls: Counter[int] = Counter()  # by second since the first call
        self.refused: Counter[int] = Counter()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        self.started = now if self.started is None else self.started
        second = int(now - self.started)
        self.calls[second] += 1
        if self.calls[second] - self.refused[second] > RATE:
            self.refused[second] += 1
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        self.taken[request.headers["Idempotency-Key"]] += 1
        return web.json_response({"ok": True}, status=201)


@pytest.fixture
async def api(server_cert_files: dict[str, Path]) -> AsyncIterator[LimitedApi]:
    limited = LimitedApi()
    runner = await serve(limited, server_cert_files["cert"], server_cert_files["key"])
    yield limited
    await runner.cleanup()


async def test_a_backlog_against_a_rate_limited_provider_is_delivered_once_each_without_a_flood(
    api: LimitedApi, server_cert_files: dict[str, Path], tmp_path: Path
) -> None:
    """200 intents, a provider taking 40 a second: every one delivered, each carried out once, and the 429s of
    any one second at most the calls under way when the first came back (and those a freed slot started before
    its verdict was in). max_attempts 3: a 429 that spent a try failed the intents still waiting at the third."""
    http = HttpIntegration.from_config({**config(api.port, server_cert_files["ca"]), "concurrency": SLOTS}, ENV)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    finals: list[Ack] = []
    all_in = asyncio.Event()

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)
        if len(finals) == INTENTS:
            all_in.set()

    executor = Executor(ledger, {"http.request": http}, on_final=on_final, max_attempts=3, idle_poll=0.2)
    try:
        now = time.time()
        payload = {"credential": "crm", "method": "POST", "path": "/orders", "json": {"n": 1}}
        batch = [Envelope(f"i-{n}", "shop", "http.request", int(now * 1000), None, 1, payload) for n in range(INTENTS)]
        await admit(ledger, DEV, batch, lambda _: Decision(True), now)
        await executor.start()
        await asyncio.wait_for(all_in.wait(), 120)  # a bound on a hang only: the assertions are on counts
    finally:
        await executor.stop()
        await http.aclose()
        await ledger.close()
    assert Counter((a.state, a.code) for a in finals) == {(AckState.DELIVERED, ""): INTENTS}
    assert sorted(api.taken.values()) == [1] * INTENTS  # each intent carried out exactly once
    assert max(api.refused.values(), default=0) <= 2 * SLOTS, api.refused  # no flood after a "slow down"
    assert sum(api.calls.values()) <= INTENTS + 2 * SLOTS * len(api.calls), api.calls
