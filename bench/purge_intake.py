"""Admission at a SQLite bridge node while its retention purges old rows, for before/after pairs.

    python -m bench.purge_intake [--rows 1000000] [--batches-per-s 100]

Fills a fresh SQLite store's ledger with `--rows` final rows the edge confirmed, last changed a year ago,
then admits batches of 20 intents, `--batches-per-s` a second (as devices do while the node runs), and
after 2 s runs the node's retention once (`Retention.run_once`, in the node's own threads, as every hour).
Prints how long the purge took and each batch's admission time (start to committed) before the purge and
while it ran: p50, p99 and the longest, and how many batches were admitted during it. For the "before",
run it with PYTHONPATH pointing at a checkout of the old tree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench.stack import payload
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.retention import Retention
from cloud_bridge.store import open_store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Envelope

DEVICE = DeviceRef("bench-dev", "bench", "bench-device")
YEAR = 365 * 86_400.0
BATCH = 20


def _allow(_envelope: Envelope) -> Decision:
    return Decision(True)


def _fill(ledger: Path, rows: int) -> None:
    """Copy the one admitted row `rows` times as delivered, confirmed and a year old."""
    with contextlib.closing(sqlite3.connect(ledger, isolation_level=None)) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(intents)") if r[1] != "seq"]
        made = {"intent_id": "'old' || n", "state": "'delivered'", "confirmed": "1", "updated": "0", "announce": "0"}
        select = ", ".join(made.get(c, c) for c in columns)
        conn.execute("BEGIN")
        conn.execute(
            f"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < ?)"
            f" INSERT INTO intents ({', '.join(columns)}) SELECT {select} FROM c, intents WHERE intent_id = 'seed'",
            (rows,),
        )
        conn.execute("COMMIT")


def _summary(name: str, waits: list[float]) -> str:
    if not waits:
        return f"{name}: no batch"
    ms = sorted(w * 1000 for w in waits)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: {len(ms)} batches, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"


async def measure(rows: int, per_s: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="purge-intake-", dir="/var/tmp"))
    try:
        store = open_store(StoreUrl.sqlite(work), node="bench")
        await store.open()
        try:
            now = time.time()
            seed = Envelope("seed", "bench-app", "http.request", int(now * 1000), None, 1, payload(0))
            await store.ledger.admit(DEVICE, requests_for([seed], _allow, now, DEFAULT_MAX_AGE), now)
            started = time.perf_counter()
            await asyncio.to_thread(_fill, work / "ledger.db", rows)
            print(f"filled {rows:,} rows in {time.perf_counter() - started:.1f} s")
            retention = Retention(store.intents, intent_age=30 * 86_400.0, audit_age=YEAR, clock=time.time)
            before: list[float] = []
            during: list[float] = []
            purging = asyncio.Event()
            purge_done = asyncio.Event()

            async def purge() -> float:
                await asyncio.sleep(2.0)
                purging.set()
                began = time.perf_counter()
                done = await retention.run_once()
                took = time.perf_counter() - began
                purge_done.set()
                print(f"purge: {done.intents:,} intents deleted in {took:.2f} s")
                return took

            task = asyncio.create_task(purge())
            n = 0
            while not purge_done.is_set():
                tick = time.perf_counter()
                stamp = time.time()
                batch = [
                    Envelope(f"new{n + i:09d}", "bench-app", "http.request", int(stamp * 1000), None, 1, payload(i))
                    for i in range(BATCH)
                ]
                n += BATCH
                in_purge = purging.is_set()
                await store.ledger.admit(DEVICE, requests_for(batch, _allow, stamp, DEFAULT_MAX_AGE), stamp)
                waited = time.perf_counter() - tick
                (during if in_purge else before).append(waited)
                await asyncio.sleep(max(0.0, 1 / per_s - waited))
            await task
            print(_summary("before the purge", before))
            print(_summary("during the purge", during))
        finally:
            await store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches-per-s", type=float, default=100.0)
    args = parser.parse_args()
    asyncio.run(measure(args.rows, args.batches_per_s))


if __name__ == "__main__":
    main()
