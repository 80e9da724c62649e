"""Kill -9 a process that admits and executes through SqliteLedger; every acked intent must survive."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from cloud_bridge.executor import Executor
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")

# Eight writers admit batches of 20 and print the ids once `admit` returned (= acked to the edge);
# a runner claims and finishes rows meanwhile, so the kill also lands in executor transactions.
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from cloud_bridge.ledger_plan import requests_for
    from cloud_bridge.ledger_states import EntryState
    from cloud_bridge.ledger_sqlite import SqliteLedger
    from cloud_bridge.policy import Decision, DeviceRef
    from intent_contract.codec import Envelope

    async def main(path, prefix):
        ledger = SqliteLedger(path)
        await ledger.open()
        device = DeviceRef("dev-1", "acme", "boiler-7")

        async def writer(w):
            n = 0
            while True:
                ids = [f"{prefix}-{w}-{n}-{k}" for k in range(20)]
                n += 1
                now = time.time()
                envs = [Envelope(i, "app", "email.send", int(now * 1000), None, 1, {"to": "a@b.c"}) for i in ids]
                await ledger.admit(device, requests_for(envs, lambda e: Decision(True), now, 86400.0), now)
                sys.stdout.write(" ".join(ids) + "\\n")
                sys.stdout.flush()

        async def runner():
            while True:
                for entry in await ledger.claim(["email.send"], 10, time.time()):
                    await ledger.finish(entry, EntryState.DELIVERED, "", "ok", time.time(), "fake")
                await asyncio.sleep(0)

        await asyncio.gather(*(writer(w) for w in range(8)), runner())

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def run_and_kill(script: Path, db: Path, prefix: str, lines_before_kill: int) -> list[str]:
    """Start the child, SIGKILL it after `lines_before_kill` acked batches; the ids it saw acked."""
    child = subprocess.Popen(
        [sys.executable, str(script), str(db), prefix], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    acked: list[str] = []
    assert child.stdout is not None
    try:
        for _ in range(lines_before_kill):
            line = child.stdout.readline()
            assert line.endswith(b"\n"), child.stderr.read() if child.stderr else b""
            acked.extend(line.decode().split())
        child.send_signal(signal.SIGKILL)
        rest, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, err
    # Lines completed before the kill were acked too; a torn last line is not counted.
    acked.extend(i for line in rest.decode().split("\n")[:-1] for i in line.split())
    return acked


class Recorder:
    def __init__(self) -> None:
        self.kind = "email.send"
        self.concurrency = 8
        self.ids: list[str] = []

    async def execute(self, job: Job) -> Outcome:
        self.ids.append(job.intent_id)
        return Outcome("ok")

    async def aclose(self) -> None:
        return None


async def verify(db: Path, acked: list[str]) -> tuple[int, int]:
    """Every acked id is a duplicate now (a new row would be refused by `decide`); then finish the rest."""
    ledger = SqliteLedger(db)
    await ledger.open()
    try:
        resumed = await ledger.recover(0.0)

        def decide(envelope: Envelope) -> Decision:
            return Decision(False, "policy_kind", "not stored before the kill")

        lost: list[str] = []
        for start in range(0, len(acked), 500):
            envs = [Envelope(i, "app", "email.send", 0, None, 1, {}) for i in acked[start : start + 500]]
            acks = await admit(ledger, DEV, envs, decide, 1.0)
            lost += [a.id for a in acks if a.code == "policy_kind"]
        assert lost == [], f"{len(lost)} acked intents were lost, e.g. {lost[:3]}"

        async def on_final(device_id: str, ack: Ack) -> None:
            return None

        recorder = Recorder()
        await Executor(ledger, {"email.send": recorder}, on_final=on_final).run_due()
        states = {a.id: a.state for a in await ledger.unconfirmed(DEV.device_id)}
        assert all(states.get(i) is AckState.DELIVERED for i in acked)
        return resumed, len(states)
    finally:
        await ledger.close()


def test_acked_intents_survive_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    db = tmp_path / "ledger.db"
    acked: list[str] = []
    for round_ in range(3):
        acked += run_and_kill(script, db, f"r{round_}", lines_before_kill=40 + 20 * round_)
        _, total = asyncio.run(verify(db, acked))
        assert total >= len(acked)
    assert len(acked) == len(set(acked)) >= 3 * 40 * 20
