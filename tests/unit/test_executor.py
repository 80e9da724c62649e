"""Executor over a real SqliteLedger with in-process fake integrations, a fake clock and fixed jitter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.executor import Executor
from cloud_bridge.fair_share import Share, Shares
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.backoff import compute_backoff
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.stores import admit

NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")
SECRET = "sk_live_SECRET123"


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


class FakeIntegration:
    """Records jobs; each call pops the next scripted result for its intent id (default: delivered)."""

    def __init__(self, kind: str = "email.send", concurrency: int = 4) -> None:
        self.kind = kind
        self.concurrency = concurrency
        self.jobs: list[Job] = []
        self.script: dict[str, list[BaseException | Outcome]] = {}
        self.gate: asyncio.Event | None = None
        self.delays: list[float] = []  # seconds each call takes, in turn
        self.active = 0
        self.max_active = 0

    async def execute(self, job: Job) -> Outcome:
        self.jobs.append(job)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delays:
                await asyncio.sleep(self.delays.pop(0))
            steps = self.script.get(job.intent_id)
            result = steps.pop(0) if steps else Outcome("250 queued as 42")
            if isinstance(result, BaseException):
                raise result
            return result
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        return None


class Finals:
    def __init__(self) -> None:
        self.acks: list[tuple[str, Ack]] = []

    async def __call__(self, device_id: str, ack: Ack) -> None:
        self.acks.append((device_id, ack))

    def states(self) -> dict[str, tuple[AckState, str]]:
        return {ack.id: (ack.state, ack.code) for _, ack in self.acks}


def allow(_: Envelope) -> Decision:
    return Decision(True, overrides={"from": "alerts@acme.example"})


def env(ident: str, *, kind: str = "email.send", expires: int | None = None) -> Envelope:
    return Envelope(ident, "hvac-ui", kind, int(NOW * 1000), expires, 1, {"to": "ops@example.com", "text": "hot"})


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    store = SqliteLedger(tmp_path / "ledger.db")
    await store.open()
    yield store
    await store.close()


def make(
    ledger: SqliteLedger, *integrations: FakeIntegration, clock: Clock, finals: Finals, **options: float
) -> Executor:
    return Executor(
        ledger,
        {i.kind: i for i in integrations},
        on_final=finals,
        now=clock,
        rand=lambda: 0.5,
        **options,  # type: ignore[arg-type]
    )


async def test_delivers_and_reports_each_result(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    await admit(ledger, DEV, [env("a"), env("b")], allow, NOW)
    assert await make(ledger, smtp, clock=clock, finals=finals).run_due() == 2
    assert finals.states() == {"a": (AckState.DELIVERED, ""), "b": (AckState.DELIVERED, "")}
    assert {d for d, _ in finals.acks} == {"dev-1"}
    job = smtp.jobs[0]
    assert (job.device_id, job.tenant, job.kind, job.attempt) == ("dev-1", "acme", "email.send", 1)
    assert job.overrides == {"from": "alerts@acme.example"}
    assert job.payload["to"] == "ops@example.com"
    assert job.idempotency_key == "dev-1:a:1"
    records = await ledger.audit(DEV.device_id)
    assert [(r.event, r.integration, r.detail) for r in records][-1] == (
        AuditEvent.DELIVER,
        "email.send",
        "250 queued as 42",
    )
    assert await ledger.unconfirmed(DEV.device_id) == [ack for _, ack in finals.acks]


async def test_transient_errors_are_retried_with_backoff(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.script["a"] = [TransientError("421 busy", code="smtp_421")]
    executor = make(ledger, smtp, clock=clock, finals=finals, retry_base=2.0, retry_cap=300.0)
    await admit(ledger, DEV, [env("a")], allow, NOW)
    assert await executor.run_due() == 1
    assert finals.acks == []
    due = NOW + compute_backoff(1, base=2.0, cap=300.0, jitter=0.5)
    assert await ledger.next_due(["email.send"]) == due
    assert await executor.run_due() == 0
    clock.t = due
    assert await executor.run_due() == 1
    assert finals.states() == {"a": (AckState.DELIVERED, "")}
    events = [(r.event, r.code) for r in await ledger.audit()]
    assert events == [(AuditEvent.ACCEPT, ""), (AuditEvent.RETRY, "smtp_421"), (AuditEvent.DELIVER, "")]
    assert [j.idempotency_key for j in smtp.jobs] == ["dev-1:a:1", "dev-1:a:1"]


async def test_retry_after_wins_when_longer(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.script["a"] = [TransientError("429", code="http_429", retry_after=120.0)]
    await admit(ledger, DEV, [env("a")], allow, NOW)
    await make(ledger, smtp, clock=clock, finals=finals).run_due()
    assert await ledger.next_due(["email.send"]) == NOW + 120.0


async def test_gives_up_after_max_attempts(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.script["a"] = [TransientError("421 busy", code="smtp_421") for _ in range(10)]
    executor = Executor(ledger, {"email.send": smtp}, on_final=finals, now=clock, rand=lambda: 0.0, max_attempts=3)
    await admit(ledger, DEV, [env("a")], allow, NOW)
    assert await executor.run_due() == 3
    [(_, ack)] = finals.acks
    assert (ack.state, ack.code) == (AckState.FAILED, "smtp_421")
    assert "gave up after 3 tries" in ack.detail
    assert len(smtp.jobs) == 3


async def test_permanent_errors_fail_at_once(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.script["a"] = [PermanentError("550 no such user", code="smtp_550")]
    await admit(ledger, DEV, [env("a")], allow, NOW)
    assert await make(ledger, smtp, clock=clock, finals=finals).run_due() == 1
    [(_, ack)] = finals.acks
    assert (ack.state, ack.code, ack.detail) == (AckState.FAILED, "smtp_550", "550 no such user")


async def test_foreign_exceptions_retry_and_log_no_secret(
    ledger: SqliteLedger, caplog: pytest.LogCaptureFixture
) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.script["a"] = [RuntimeError(f"connect https://api.example/?token={SECRET}")]
    await admit(ledger, DEV, [env("a")], allow, NOW)
    with caplog.at_level(logging.DEBUG):
        await make(ledger, smtp, clock=clock, finals=finals).run_due()
    assert "RuntimeError" in caplog.text
    assert SECRET not in caplog.text
    assert "ops@example.com" not in caplog.text
    [record] = [r for r in await ledger.audit() if r.event is AuditEvent.RETRY]
    assert record.code == "integration_error"
    assert SECRET not in record.detail
    assert finals.acks == []


async def test_kind_without_integration_fails(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    await admit(ledger, DEV, [env("s", kind="sms.send")], allow, NOW)
    assert await make(ledger, smtp, clock=clock, finals=finals).run_due() == 1
    assert finals.states() == {"s": (AckState.FAILED, "no_integration")}
    assert smtp.jobs == []


async def test_expired_before_run_is_not_executed(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    await admit(ledger, DEV, [env("a", expires=int(NOW * 1000) + 1000)], allow, NOW)
    clock.t = NOW + 1
    await make(ledger, smtp, clock=clock, finals=finals).run_due()
    assert finals.states() == {"a": (AckState.EXPIRED, "expired")}
    assert smtp.jobs == []


async def test_expires_instead_of_waiting_past_its_deadline(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.script["a"] = [TransientError("429", code="http_429", retry_after=60.0)]
    await admit(ledger, DEV, [env("a", expires=int(NOW * 1000) + 10_000)], allow, NOW)
    await make(ledger, smtp, clock=clock, finals=finals).run_due()
    assert finals.states() == {"a": (AckState.EXPIRED, "expired")}


async def test_loop_honours_concurrency_and_wakes(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(concurrency=2), Clock(), Finals()
    smtp.gate = asyncio.Event()
    executor = make(ledger, smtp, clock=clock, finals=finals, idle_poll=60.0)
    await executor.start()
    try:
        await admit(ledger, DEV, [env(f"i{n}") for n in range(6)], allow, NOW)
        executor.wake()
        await eventually(lambda: smtp.active == 2)
        await asyncio.sleep(0.05)
        assert executor.in_flight == 2
        smtp.gate.set()
        await eventually(lambda: len(finals.acks) == 6)
        assert smtp.max_active == 2
        await admit(ledger, DEV, [env("late")], allow, NOW)
        executor.wake()
        await eventually(lambda: len(finals.acks) == 7)
    finally:
        await executor.stop()


async def test_an_idle_executor_offers_its_free_slots_and_runs_what_an_admission_claimed(
    ledger: SqliteLedger,
) -> None:
    smtp, sms, clock, finals = FakeIntegration(concurrency=3), FakeIntegration("sms.send", 1), Clock(), Finals()
    smtp.gate = sms.gate = asyncio.Event()
    executor = make(ledger, smtp, sms, clock=clock, finals=finals, idle_poll=60.0)
    assert executor.offer("acme") is None  # not started
    await executor.start()
    try:

        def idle() -> bool:  # a fill found nothing waiting: offers are made (this one is given back)
            offer = executor.offer("acme")
            if offer is not None:
                executor.release(offer)
            return offer is not None

        await eventually(idle)
        offer = executor.offer("acme")
        assert offer is not None and offer.slots == {"email.send": 3, "sms.send": 1}
        assert executor.offer("acme") is None  # every free slot is reserved for the first
        batch = [env("a"), env("b"), env("c"), env("d"), env("t", kind="sms.send")]
        requests = requests_for(batch, allow, NOW, DEFAULT_MAX_AGE)
        _, claimed = await ledger.admit_claiming(DEV, requests, NOW, offer)
        assert sorted(e.intent_id for e in claimed) == ["a", "b", "c", "t"]
        executor.adopt(offer, claimed)
        await eventually(lambda: len(smtp.jobs) == 3 and len(sms.jobs) == 1)
        assert executor.in_flight == 4
        assert executor.offer("acme") is None  # the slots are busy now, not reserved
        executor.wake()  # "d" waits: the admission says so, and no offer is made until a fill has looked
        smtp.gate.set()
        await eventually(lambda: len(finals.acks) == 5)
        assert sorted(j.intent_id for j in smtp.jobs) == ["a", "b", "c", "d"]  # each once
        assert all(j.attempt == 1 for j in smtp.jobs)
        await eventually(idle)
    finally:
        await executor.stop()
    assert executor.offer("acme") is None  # stopped


async def test_the_next_due_time_is_asked_only_when_slots_go_unfilled(
    ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # next_due scans every queued row of its kinds (5.7 ms with 20,000 queued); asked on passes where
    # every free slot had been filled, it took a tenth of the bridge's time during a drain.
    total = 200
    queued_when_asked: list[int] = []
    real_next_due = ledger.next_due

    async def counting_next_due(kinds: list[str]) -> float | None:
        if "email.send" in kinds:
            queued_when_asked.append(total - len(smtp.jobs))
        return await real_next_due(kinds)

    monkeypatch.setattr(ledger, "next_due", counting_next_due)
    smtp, clock, finals = FakeIntegration(concurrency=2), Clock(), Finals()
    smtp.delays = [(n % 7) / 1000 for n in range(total)]  # slots free at varied moments, as in real life
    executor = make(ledger, smtp, clock=clock, finals=finals, idle_poll=60.0)
    await admit(ledger, DEV, [env(f"i{n}") for n in range(total)], allow, NOW)
    await executor.start()
    try:
        await eventually(lambda: len(finals.acks) == total)
    finally:
        await executor.stop()
    assert queued_when_asked  # once the queue ran dry
    assert max(queued_when_asked) < smtp.concurrency


async def test_a_slot_is_held_until_its_result_is_committed(
    ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # So at most `concurrency` calls can have reached the provider with no result recorded when the node
    # dies: the calls that may run twice. (Given back at the provider's answer, the drain benchmark ran
    # faster and twice as many were at risk: bench/findings.md F23.)
    order: list[str] = []
    committing = asyncio.Event()
    real_finish = ledger.finish

    async def slow_finish(entry: LedgerEntry, *args: Any, **kwargs: Any) -> Ack:
        if entry.intent_id == "a":
            await committing.wait()
        ack = await real_finish(entry, *args, **kwargs)
        order.append(f"committed {entry.intent_id}")
        return ack

    class Recording(FakeIntegration):
        async def execute(self, job: Job) -> Outcome:
            order.append(f"called {job.intent_id}")
            return await super().execute(job)

    monkeypatch.setattr(ledger, "finish", slow_finish)
    smtp, clock, finals = Recording(concurrency=1), Clock(), Finals()
    executor = make(ledger, smtp, clock=clock, finals=finals, idle_poll=60.0)
    await admit(ledger, DEV, [env("a"), env("b")], allow, NOW)
    await executor.start()
    try:
        await eventually(lambda: order == ["called a"] and smtp.active == 0)  # a answered, its commit held
        committing.set()
        await eventually(lambda: len(finals.acks) == 2)
    finally:
        await executor.stop()
    assert order == ["called a", "committed a", "called b", "committed b"]


async def test_rows_claimed_ahead_start_without_waiting_for_a_claim(
    ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp, clock, finals = FakeIntegration(concurrency=2), Clock(), Finals()
    smtp.gate = asyncio.Event()
    executor = make(ledger, smtp, clock=clock, finals=finals, idle_poll=60.0)
    await admit(ledger, DEV, [env(f"i{n}") for n in range(6)], allow, NOW)
    await executor.start()
    claims_open = asyncio.Event()
    real_claim = ledger.claim

    async def held_claim(*args: Any, **kwargs: Any) -> list[LedgerEntry]:
        await claims_open.wait()
        return await real_claim(*args, **kwargs)

    try:
        await eventually(lambda: smtp.active == 2)
        depth = await ledger.depth()
        assert depth.counts[("running", "email.send")] == 4  # 2 calls under way, 2 rows claimed ahead
        assert depth.counts[("queued", "email.send")] == 2
        monkeypatch.setattr(ledger, "claim", held_claim)  # from now on no claim completes
        smtp.gate.set()
        await eventually(lambda: len(smtp.jobs) == 4)  # the two claimed ahead ran, with no claim between
        assert smtp.max_active == 2
        claims_open.set()
        await eventually(lambda: len(finals.acks) == 6)
    finally:
        claims_open.set()
        await executor.stop()
    assert sorted(j.intent_id for j in smtp.jobs) == [f"i{n}" for n in range(6)]  # each once


async def test_rows_claimed_ahead_never_run_a_tenant_past_its_cap(ledger: SqliteLedger) -> None:
    # A fill hands out twice the slots (running and claimed ahead); a tenant capped at half the slots holds
    # up to that many rows, but no more than half of them run at once.
    smtp, clock, finals = FakeIntegration(concurrency=4), Clock(), Finals()
    smtp.delays = [0.002] * 12
    executor = make(ledger, smtp, clock=clock, finals=finals, idle_poll=60.0)
    executor.use({"email.send": smtp}, shares=Shares({"acme": Share(max_share=0.5)}))
    await admit(ledger, DEV, [env(f"i{n}") for n in range(12)], allow, NOW)
    await executor.start()
    try:
        await eventually(lambda: len(finals.acks) == 12)
    finally:
        await executor.stop()
    assert smtp.max_active == 2


async def test_rows_claimed_ahead_keep_their_leases_and_a_stop_gives_them_back_unrun(
    ledger: SqliteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewed: set[str] = set()
    real_renew = ledger.renew

    async def recording_renew(entries: Sequence[LedgerEntry], until: float) -> int:
        renewed.update(e.intent_id for e in entries)
        return await real_renew(entries, until)

    monkeypatch.setattr(ledger, "renew", recording_renew)
    smtp, clock, finals = FakeIntegration(concurrency=1), Clock(), Finals()
    smtp.gate = asyncio.Event()  # never set: the provider hangs
    executor = make(ledger, smtp, clock=clock, finals=finals, idle_poll=60.0, stop_grace=0.05, lease=0.15)
    await admit(ledger, DEV, [env("a"), env("b"), env("c")], allow, NOW)
    await executor.start()
    await eventually(lambda: smtp.active == 1)
    await eventually(lambda: renewed == {"a", "b"})  # the call under way and the row claimed ahead
    await executor.stop()
    assert executor.in_flight == 0
    assert [j.intent_id for j in smtp.jobs] == ["a"]  # "b" was not started by a stopping executor
    # ... and is back in the queue as before its claim (it never reached the provider): only "a" is resumed
    with contextlib.closing(sqlite3.connect(ledger.path)) as conn:
        b = conn.execute("SELECT state, tries, owner FROM intents WHERE intent_id = 'b'").fetchone()
    assert b == ("queued", 0, "")
    assert await ledger.recover(NOW) == 1
    finals = Finals()
    assert await make(ledger, FakeIntegration(), clock=clock, finals=finals).run_due() == 3
    assert sorted(finals.states()) == ["a", "b", "c"]


async def test_start_resumes_rows_left_running(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    crashed = SqliteLedger(path)
    await crashed.open()
    await admit(crashed, DEV, [env("a")], allow, NOW)
    await crashed.claim(["email.send"], 5, NOW)  # the bridge died during the provider call
    await crashed.close()
    ledger = SqliteLedger(path)
    await ledger.open()
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    executor = make(ledger, smtp, clock=clock, finals=finals)
    try:
        await executor.start()
        await eventually(lambda: len(finals.acks) == 1)
        assert finals.states() == {"a": (AckState.DELIVERED, "")}
        assert [j.idempotency_key for j in smtp.jobs] == ["dev-1:a:1"]
    finally:
        await executor.stop()
        await ledger.close()


async def test_stop_cancels_hung_jobs_which_resume_later(ledger: SqliteLedger) -> None:
    smtp, clock, finals = FakeIntegration(), Clock(), Finals()
    smtp.gate = asyncio.Event()  # never set: the provider hangs
    executor = make(ledger, smtp, clock=clock, finals=finals, stop_grace=0.05)
    await admit(ledger, DEV, [env("a")], allow, NOW)
    await executor.start()
    await eventually(lambda: smtp.active == 1)
    await executor.stop()
    assert smtp.active == 0
    assert finals.acks == []
    assert await ledger.recover(NOW) == 1


async def test_a_failing_on_final_does_not_stop_the_executor(ledger: SqliteLedger) -> None:
    smtp, clock = FakeIntegration(), Clock()
    seen: list[str] = []

    async def on_final(device_id: str, ack: Ack) -> None:
        seen.append(ack.id)
        raise ConnectionError("listener gone")

    await admit(ledger, DEV, [env("a"), env("b")], allow, NOW)
    executor = Executor(ledger, {"email.send": smtp}, on_final=on_final, now=clock)
    assert await executor.run_due() == 2
    assert sorted(seen) == ["a", "b"]
    assert {a.state for a in await ledger.unconfirmed(DEV.device_id)} == {AckState.DELIVERED}


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "x.db")
    with pytest.raises(ValueError, match="max_attempts"):
        Executor(ledger, {}, on_final=Finals(), max_attempts=0)
    with pytest.raises(ValueError, match="retry_base"):
        Executor(ledger, {}, on_final=Finals(), retry_base=10.0, retry_cap=1.0)
    with pytest.raises(ValueError, match="concurrency"):
        Executor(ledger, {"email.send": FakeIntegration(concurrency=0)}, on_final=Finals())
    assert EntryState.RUNNING.ack_state is AckState.ACCEPTED
