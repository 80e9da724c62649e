"""An intent whose every try ends without a result (the bridge stops mid-call, each time): the executor over a real
SqliteLedger, started and stopped as a node is, gives up once its tries are used up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from cloud_bridge.audit import AuditEvent
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")
MAX_ATTEMPTS = 3


class HangsAtFirst:
    """A provider whose first `hangs` calls never answer (the bridge is stopped during each); later ones succeed."""

    kind = "email.send"
    concurrency = 1

    def __init__(self, hangs: int) -> None:
        self.calls: list[Job] = []
        self._hangs = hangs

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job)
        if len(self.calls) <= self._hangs:
            await asyncio.Event().wait()
        return Outcome("250 queued")

    async def aclose(self) -> None:
        return None


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_an_intent_stopped_mid_call_at_every_try_is_not_run_past_max_attempts(tmp_path: Path) -> None:
    """A try cut off by a stop (or a crash, or a lost lease) counts as a try, and `max_attempts` bounds the tries of
    an attempt; yet the executor gave up only after a try that ended with an error, so an intent whose calls never
    ended (one that hangs its provider, or takes the bridge down with it) was called again at every restart."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    provider, finals = HangsAtFirst(MAX_ATTEMPTS), list[Ack]()

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)

    def node() -> Executor:
        return Executor(ledger, {"email.send": provider}, on_final=on_final, max_attempts=MAX_ATTEMPTS, stop_grace=0)

    try:
        now = time.time()
        envelope = Envelope("i-1", "hvac-ui", "email.send", int(now * 1000), None, 1, {"to": "a@example.com"})
        await admit(ledger, DEV, [envelope], lambda _: Decision(True), now)
        for tries in range(1, MAX_ATTEMPTS + 1):
            executor = node()
            await executor.start()
            await until(lambda n=tries: len(provider.calls) == n)  # type: ignore[misc]
            await executor.stop()  # the call under way is cut off: the row stays running, resumed at the next start
        executor = node()
        await executor.start()
        try:
            await until(lambda: bool(finals))
        finally:
            await executor.stop()
        history = await ledger.audit("dev-1")
    finally:
        await ledger.close()
    assert len(provider.calls) == MAX_ATTEMPTS
    assert {job.idempotency_key for job in provider.calls} == {"dev-1:i-1:1"}
    (final,) = finals
    assert (final.state, final.code) == (AckState.FAILED, "tries_used_up")
    assert final.detail == f"gave up after {MAX_ATTEMPTS} tries, none with a result (max_attempts is {MAX_ATTEMPTS})"
    events = [(r.event, r.code) for r in history]
    assert events == [
        (AuditEvent.ACCEPT, ""),
        *[(AuditEvent.RETRY, "resumed")] * MAX_ATTEMPTS,
        (AuditEvent.FAIL, "tries_used_up"),
    ]
