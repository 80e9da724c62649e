"""The queue summaries a metrics scrape reads, with a large backlog, and what they do to intake (F35, F36).

    python -m bench.summary_scale [--pending 1000000] [--seconds 15] [--only edge|bridge]

`ops.summary` runs on the store's writer thread at every metrics scrape and health report, so its time
is a pause of every commit. Fills an outbox database with `--pending` intents (priorities 0-9, every
other one forwarded; about 30 s for 1,000,000), then:
- in-process, times `ops.summary` and, in the same run, `MIN(created)` over the pending rows (what
  `summary` read before F35): the median of 5 of each;
- live, runs `edge-outbox run --no-forward --metrics` on a copy of it, with one app publishing at
  200/s for `--seconds` while `/metrics` is scraped every second: PUBACK latency and scrape time.
Then the bridge's SQLite ledger with `--pending` queued intents (about 40 s for 1,000,000), in-process:
batches of 100 intents admitted every 20 ms for `--seconds` while `depth()` (what `/metrics` reads) runs
every second: the admissions' latency and the reads' time.
For the "before", run it with PYTHONPATH at an older checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.load import TOPIC
from bench.mqttraw import MqttClient
from bench.procs import free_port
from bench.stack import Stack, intent_body, payload
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from edge_outbox import db, ops
from edge_outbox.intake_rules import Admitted, Refused
from edge_outbox.states import PENDING, sql_set
from intent_contract.codec import Envelope

BATCH = 1000
RATE = 200
_DEVICE = DeviceRef("bench-dev", "bench", "bench-device")
_OLD = f"SELECT MIN(created) FROM intents WHERE state IN {sql_set(PENDING)}"


def _allow(_envelope: Envelope) -> Decision:
    return Decision(True)


def _median_ms(run: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def fill(data_dir: Path, pending: int) -> None:
    conn = db.connect(data_dir)
    conn.execute("PRAGMA synchronous = OFF")  # filling only: the figures below read
    start = time.perf_counter()
    for first in range(0, pending, BATCH):
        items: list[Admitted | Refused] = [
            Admitted(f"i{n:09d}", "bench-app", "http.request", intent_body(n), n % 10, 1_000 + n, None, False)
            for n in range(first, min(first + BATCH, pending))
        ]
        conn.execute("BEGIN IMMEDIATE")
        ops.commit_intakes(conn, items, ops.QueueLimits(), 1_000 + first)
        conn.execute("COMMIT")
    conn.execute("UPDATE intents SET state = 'forwarded' WHERE seq % 2 = 0")
    print(f"{pending:,} pending intents stored in {time.perf_counter() - start:.0f} s")
    assert ops.summary(conn).oldest_pending_created == conn.execute(_OLD).fetchone()[0] == 1_000
    new_ms = _median_ms(lambda: ops.summary(conn))
    old_ms = _median_ms(lambda: conn.execute(_OLD).fetchone())
    print(f"in-process: ops.summary {new_ms:.3f} ms; MIN(created) over the pending rows {old_ms:.1f} ms (median of 5)")
    conn.close()


def _took(latencies: list[float], sent: float, _: object) -> None:
    latencies.append(time.perf_counter() - sent)


async def publish_at_rate(port: int, seconds: float) -> list[float]:
    """PUBACK latencies of one app publishing QoS 1 at RATE per second."""
    client = await MqttClient.connect("127.0.0.1", port, "bench-latency")
    latencies: list[float] = []
    start = time.monotonic()
    for n in range(int(seconds * RATE)):
        await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
        sent = time.perf_counter()
        client.publish(TOPIC, intent_body(n)).add_done_callback(functools.partial(_took, latencies, sent))
    await asyncio.sleep(3)  # the last PUBACKs
    await client.close()
    return latencies


def live(stack: Stack, data_dir: Path, seconds: float) -> None:
    port, metrics = free_port(), free_port()
    stack.start_edge(data_dir, port, "--no-forward", "--max-queue-items", "0", "--metrics", f"127.0.0.1:{metrics}")
    stop, scrapes = threading.Event(), []

    def scrape() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30) as answer:
                answer.read()
            scrapes.append(time.perf_counter() - start)
            stop.wait(1.0)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        latencies = asyncio.run(publish_at_rate(port, seconds))
    finally:
        stop.set()
        scraper.join()
    print(
        f"live, {RATE}/s with /metrics scraped every second: {len(latencies):,} PUBACKs, {_quantiles(latencies)};"
        f" scrape median {statistics.median(scrapes) * 1e3:.0f} ms"
    )


def _quantiles(seconds: list[float]) -> str:
    q = statistics.quantiles(seconds, n=100)
    return f"p50 {q[49] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms, max {max(seconds) * 1e3:.0f} ms"


async def bridge(work: Path, pending: int, seconds: float) -> None:
    ledger = SqliteLedger(work / "ledger.db")
    await ledger.open()
    try:
        now, start = time.time(), time.perf_counter()

        async def admit(first: int, count: int) -> None:
            batch = [
                Envelope(f"i{n:09d}", "bench-app", "http.request", int(now * 1000), None, 1, payload(n))
                for n in range(first, first + count)
            ]
            await ledger.admit(_DEVICE, requests_for(batch, _allow, now, DEFAULT_MAX_AGE), now)

        for first in range(0, pending, BATCH):
            await admit(first, BATCH)
        print(f"bridge: {pending:,} queued intents admitted in {time.perf_counter() - start:.0f} s")
        admits: list[float] = []
        reads: list[float] = []

        async def timed(into: list[float], call: Awaitable[object]) -> None:
            began = time.perf_counter()
            await call
            into.append(time.perf_counter() - began)

        tasks = []
        start = time.monotonic()
        for n in range(int(seconds * 50)):
            await asyncio.sleep(max(0.0, start + n / 50 - time.monotonic()))
            tasks.append(asyncio.ensure_future(timed(admits, admit(pending + n * 100, 100))))
            if n % 50 == 0:
                tasks.append(asyncio.ensure_future(timed(reads, ledger.depth())))
        await asyncio.gather(*tasks)
        print(
            f"bridge, 100 intents admitted every 20 ms with depth() every second: admission {_quantiles(admits)};"
            f" depth() median {statistics.median(reads) * 1e3:.0f} ms"
        )
    finally:
        await ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--only", choices=("edge", "bridge"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="summary-scale-", dir="/var/tmp"))
    stack = Stack(work)
    try:
        if args.only != "bridge":
            fill(work / "edge", args.pending)
            live(stack, work / "edge", args.seconds)
        if args.only != "edge":
            asyncio.run(bridge(work, args.pending, args.seconds))
    finally:
        stack.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
