"""CPU per intent of the edge store's part of a drain, in one process, for before/after pairs.

    python -m bench.edge_cycle [--runs 5]

Stores 20,000 http.request intents per run, then does what the forwarder does with them while a
backlog drains: takes batches of 500 to send, applies the bridge's `accepted` acks 200 at a time and its
final results 16 at a time (one executor group of the bench's bridge), each call committed on its own
through the store's writer thread. Prints the process's CPU microseconds per intent for each run (the
writer thread's and the event loop's together) and their median; the intake is not counted. It does
this twice: with ids made at intake (they grow with time, as `IdGenerator` makes them) and with ids
the app gave (random UUIDs, as an app that wants exactly-once may send). For the "before", run it with
PYTHONPATH pointing at a checkout of the old tree.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.ledger_cycle import print_cycles
from bench.stack import intent_body
from edge_outbox import forward_ops, ops
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from edge_outbox.store import Store
from intent_contract.codec import Ack, AckState
from intent_contract.ids import IdGenerator

PER_RUN = 20_000
SEND, ACCEPTED, FINAL = 500, 200, 16


async def cycle(runs: int, *, given: bool) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="edge-cycle-", dir="/var/tmp"))
    store = Store(work, on_events=lambda _events: None)
    await store.start()
    try:
        figures = []
        made = IdGenerator(lambda: time.time_ns() // 1_000_000, os.urandom).new
        for _ in range(runs):
            now = int(time.time() * 1000)
            for _start in range(0, PER_RUN, 500):
                ids = [str(uuid.uuid4()) if given else made() for _ in range(500)]
                items = [Admitted(x, "bench-app", "http.request", intent_body(0), 0, now, None, given) for x in ids]
                await store.call(ops.commit_intakes, items, QueueLimits(), now)
            cpu, done = time.process_time(), 0
            while rows := await store.call(
                forward_ops.take_batch, limit=SEND, max_bytes=1 << 24, sent_before=now + 1, now=now
            ):
                ids = [r.id for r in rows]
                for i in range(0, len(ids), ACCEPTED):
                    accepted = [Ack(x, AckState.ACCEPTED, "", "", now, "bench-app", 1) for x in ids[i : i + ACCEPTED]]
                    await store.call(forward_ops.apply_acks, accepted, now)
                for i in range(0, len(ids), FINAL):
                    final = [Ack(x, AckState.DELIVERED, "", "ok", now, "bench-app", 1) for x in ids[i : i + FINAL]]
                    await store.call(forward_ops.apply_acks, final, now)
                done += len(ids)
            figures.append((time.process_time() - cpu) / done * 1e6)
        return figures
    finally:
        await store.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    what = f"send {SEND} + accepted {ACCEPTED} + final {FINAL}"
    print_cycles(__doc__, functools.partial(cycle, given=False), f"{what}, ids made at intake")
    print_cycles(__doc__, functools.partial(cycle, given=True), f"{what}, ids the app gave (random)")


if __name__ == "__main__":
    main()
