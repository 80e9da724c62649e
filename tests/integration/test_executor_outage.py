"""A provider outage of minutes against the default retry policy: the executor over a real SqliteLedger and the
real http.request integration against a local HTTPS API that answers 503 (no Retry-After) until a simulated
clock passes the outage's end.

Before December 2026 the defaults (8 tries, 1 s doubling, full jitter) gave up within 127 s, about a minute
on average: a two-minute outage failed every intent it caught, and `retry_cap` (300 s) was never reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cloud_bridge.config.bridge import BridgeSection
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.outcome import RetryPolicy
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.clocks import Clock
from tests.support.http_api import ENV, config, serve
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")
OUTAGE = 15 * 60.0  # seconds of the simulated clock


class DownApi:
    """Answers 503 Service Unavailable (saying nothing of when) until `back_at` by `clock`, then 201."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.back_at = clock.t + OUTAGE
        self.answers: list[int] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        status = 503 if self.clock.t < self.back_at else 201
        self.answers.append(status)
        return web.json_response({"ok": status == 201}, status=status)


@pytest.fixture
async def api(server_cert_files: dict[str, Path]) -> AsyncIterator[DownApi]:
    down = DownApi(Clock())
    runner = await serve(down, server_cert_files["cert"], server_cert_files["key"])
    yield down
    await runner.cleanup()


def test_the_default_policy_retries_for_half_an_hour_on_average_and_reaches_its_cap() -> None:
    """The defaults of the config, the executor and the policy agree; their window is 58.5 minutes at most, 29 on
    average (full jitter), and the backoff reaches `retry_cap` (the 10th retry's ceiling is 512 s, capped)."""
    bridge = BridgeSection()
    policy = RetryPolicy(bridge.max_attempts, bridge.retry_base, bridge.retry_cap)
    assert policy == RetryPolicy()
    assert policy.window == 3511.0  # 1 + 2 + ... + 256 + 10 * 300
    assert 2 ** (policy.max_attempts - 2) * policy.base > policy.cap
    assert RetryPolicy(max_attempts=8).window == 127.0  # the defaults before December 2026


async def test_a_fifteen_minute_outage_loses_no_intent_under_the_default_policy(
    api: DownApi, server_cert_files: dict[str, Path], tmp_path: Path
) -> None:
    """Each retry at the mean of its jitter: the intent's calls span the outage and it is delivered, once."""
    clock = api.clock
    bridge = BridgeSection()
    http = HttpIntegration.from_config(config(api.port, server_cert_files["ca"]), ENV)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    finals: list[Ack] = []

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)

    executor = Executor(
        ledger,
        {"http.request": http},
        on_final=on_final,
        max_attempts=bridge.max_attempts,
        retry_base=bridge.retry_base,
        retry_cap=bridge.retry_cap,
        now=clock,
        rand=lambda: 0.5,
    )
    try:
        payload = {"credential": "crm", "method": "POST", "path": "/alarms", "json": {"zone": 4}}
        envelope = Envelope("i-1", "hvac-ui", "http.request", int(clock.t * 1000), None, 1, payload)
        await admit(ledger, DEV, [envelope], lambda _: Decision(True), clock.t)
        while not finals:
            assert await executor.run_due() == 1
            due = await ledger.next_due(["http.request"])
            if due is not None:
                clock.t = max(clock.t, due)  # the simulated clock jumps to the retry
    finally:
        await http.aclose()
        await ledger.close()
    (final,) = finals
    assert (final.state, final.code) == (AckState.DELIVERED, ""), final
    assert api.answers.count(201) == 1 and api.answers.count(503) >= 12
