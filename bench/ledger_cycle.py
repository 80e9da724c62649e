"""CPU per intent of the SQLite ledger's claim and finish cycle, in one process, for before/after pairs.

    python -m bench.ledger_cycle [--runs 5]

Admits 100,000 http.request intents into a fresh ledger, then, as an executor with 16 slots does in a
drain, claims 16 rows and finishes the 16 (concurrently, so their finishes share commits) until 20,000
are done, `--runs` times over. Prints the process's CPU microseconds per intent for each run (the
writer thread's and the event loop's together) and their median. For the "before", run it with
PYTHONPATH pointing at a checkout of the old tree.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.stack import payload
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Envelope

SLOTS = 16
PER_RUN = 20_000
DEVICE = DeviceRef("bench-dev", "bench", "bench-device")


def _allow(_envelope: Envelope) -> Decision:
    return Decision(True)


async def cycle(runs: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="ledger-cycle-", dir="/var/tmp"))
    ledger = SqliteLedger(work / "ledger.db")
    await ledger.open()
    try:
        now = time.time()
        for start in range(0, runs * PER_RUN, 500):
            batch = [
                Envelope(f"i{n:09d}", "bench-app", "http.request", int(now * 1000), None, 1, payload(n))
                for n in range(start, start + 500)
            ]
            await ledger.admit(DEVICE, requests_for(batch, _allow, now, DEFAULT_MAX_AGE), now)
        figures = []
        for _ in range(runs):
            cpu, done = time.process_time(), 0
            while done < PER_RUN:
                entries = await ledger.claim(["http.request"], SLOTS, now, owner="bench")
                finishes = (
                    ledger.finish(e, EntryState.DELIVERED, "ok", "200", now, "http", seconds=0.001) for e in entries
                )
                await asyncio.gather(*finishes)
                done += len(entries)
            figures.append((time.process_time() - cpu) / done * 1e6)
        return figures
    finally:
        await ledger.close()
        shutil.rmtree(work, ignore_errors=True)


def print_cycles(doc: str, cycle: Callable[[int], Coroutine[Any, Any, list[float]]], what: str) -> None:
    """Run `cycle` `--runs` times and print the median CPU per intent and each run's (the cycle benches' main)."""
    parser = argparse.ArgumentParser(description=doc.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=5)
    figures = asyncio.run(cycle(parser.parse_args().runs))
    runs = " ".join(f"{f:.0f}" for f in figures)
    print(f"{what}: {statistics.median(figures):.0f} us CPU per intent (runs: {runs})")


def main() -> None:
    print_cycles(__doc__, cycle, f"claim {SLOTS} + finish {SLOTS}")


if __name__ == "__main__":
    main()
