"""Property: under any sequence of admits, resends, confirms, executor runs and restarts, the ledger and
executor never run an intent attempt twice after it ended, never deliver an id twice, and ack like a model.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.stores import admit

NOW = 1_800_000_000.0
DEVICES = [DeviceRef("dev-0", "acme", "a"), DeviceRef("dev-1", "acme", "b")]
IDS = ["i0", "i1", "i2", "bad-3"]  # "bad-" ids are refused by policy
MAX_ATTEMPTS = 2

admit_op = st.tuples(
    st.just("admit"),
    st.sampled_from(range(len(DEVICES))),
    st.lists(st.tuples(st.sampled_from(IDS), st.integers(1, 3)), min_size=1, max_size=4),
)
ops = st.lists(
    st.one_of(
        admit_op,
        st.tuples(st.just("run")),
        admit_op,
        st.tuples(st.just("confirm"), st.sampled_from(range(len(DEVICES))), st.lists(st.sampled_from(IDS), max_size=3)),
        st.tuples(st.just("restart")),
    ),
    min_size=3,
    max_size=24,
)
# What the provider does with each intent id: deliver, refuse for good, or stay busy until we give up.
behaviours = st.fixed_dictionaries({i: st.sampled_from(["ok", "perm", "busy"]) for i in IDS})


class Provider:
    def __init__(self, behaviour: dict[str, str]) -> None:
        self.kind = "email.send"
        self.concurrency = 3
        self.behaviour = behaviour
        self.calls: Counter[tuple[str, str, int]] = Counter()
        self.delivered: Counter[tuple[str, str]] = Counter()

    async def execute(self, job: Job) -> Outcome:
        self.calls[(job.device_id, job.intent_id, job.attempt)] += 1
        what = self.behaviour[job.intent_id]
        if what == "perm":
            raise PermanentError("550 refused", code="smtp_550")
        if what == "busy":
            raise TransientError("421 busy", code="smtp_421")
        self.delivered[(job.device_id, job.intent_id)] += 1
        return Outcome("250 ok")

    async def aclose(self) -> None:
        return None


def decide(envelope: Envelope) -> Decision:
    if envelope.id.startswith("bad"):
        return Decision(False, "policy_recipient", "not allowed")
    return Decision(True)


# The model's view of one (device, id): its state and the attempt it holds.
Model = dict[tuple[str, str], tuple[AckState, int]]
FINAL_BY_BEHAVIOUR = {"ok": AckState.DELIVERED, "perm": AckState.FAILED, "busy": AckState.FAILED}


async def scenario(path: Path, steps: list[tuple], behaviour: dict[str, str]) -> None:  # type: ignore[type-arg]
    provider = Provider(behaviour)
    model: Model = {}

    async def on_final(device_id: str, ack: Ack) -> None:
        return None

    ledger = SqliteLedger(path)
    await ledger.open()

    def executor() -> Executor:
        return Executor(ledger, {"email.send": provider}, on_final=on_final, now=lambda: NOW, rand=lambda: 0.0,
                        max_attempts=MAX_ATTEMPTS)  # fmt: skip

    try:
        for step in steps:
            if step[0] == "admit":
                device = DEVICES[step[1]]
                envelopes = [
                    Envelope(i, "app", "email.send", int(NOW * 1000), None, a, {"to": "x@example.com"})
                    for i, a in step[2]
                ]
                acks = await admit(ledger, device, envelopes, decide, NOW)
                for envelope, ack in zip(envelopes, acks, strict=True):
                    key = (device.device_id, envelope.id)
                    known = model.get(key)
                    rerun = known is not None and known[0] in (AckState.FAILED, AckState.EXPIRED)
                    if known is None or (rerun and envelope.attempt > known[1]):
                        state = AckState.REJECTED if envelope.id.startswith("bad") else AckState.ACCEPTED
                        model[key] = (state, envelope.attempt)
                    assert ack.state is model[key][0], (key, ack, model[key])
            elif step[0] == "run":
                await executor().run_due()
                for key, (state, attempt) in model.items():
                    if state is AckState.ACCEPTED:
                        model[key] = (FINAL_BY_BEHAVIOUR[behaviour[key[1]]], attempt)
            elif step[0] == "confirm":
                await ledger.confirm(DEVICES[step[1]].device_id, step[2])
            else:
                await ledger.close()
                ledger = SqliteLedger(path)
                await ledger.open()
                assert await ledger.recover(NOW) == 0
            # Invariants after every step.
            assert all(n <= 1 for n in provider.delivered.values()), provider.delivered
            for (_device, ident, _attempt), n in provider.calls.items():
                assert n <= (MAX_ATTEMPTS if behaviour[ident] == "busy" else 1)
            for device in DEVICES:
                pending = {a.id: a.state for a in await ledger.unconfirmed(device.device_id)}
                for ident, state in pending.items():
                    assert model[(device.device_id, ident)][0] is state
    finally:
        await ledger.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, behaviour=behaviours)
def test_no_intent_runs_twice_and_acks_match_the_model(steps: list[tuple], behaviour: dict[str, str]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory) / "ledger.db", steps, behaviour))
