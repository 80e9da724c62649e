"""The edge's queue summary with a large backlog, and what it does to the intake (bench/findings.md F35).

    python -m bench.summary_scale [--pending 1000000] [--seconds 15]

`ops.summary` runs on the store's writer thread at every metrics scrape and health report, so its time
is a pause of every commit. Fills an outbox database with `--pending` intents (priorities 0-9, every
other one forwarded; about 30 s for 1,000,000), then:
- in-process, times `ops.summary` and, in the same run, `MIN(created)` over the pending rows (what
  `summary` read before F35): the median of 5 of each;
- live, runs `edge-outbox run --no-forward --metrics` on a copy of it, with one app publishing at
  200/s for `--seconds` while `/metrics` is scraped every second: PUBACK latency and scrape time.
For the "before" of the live figure, run it with PYTHONPATH at an older checkout.
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
from collections.abc import Callable
from pathlib import Path

from bench.load import TOPIC
from bench.mqttraw import MqttClient
from bench.procs import free_port
from bench.stack import Stack, intent_body
from edge_outbox import db, ops
from edge_outbox.intake_rules import Admitted, Refused
from edge_outbox.states import PENDING, sql_set

BATCH = 1000
RATE = 200
_OLD = f"SELECT MIN(created) FROM intents WHERE state IN {sql_set(PENDING)}"


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
        latencies = sorted(asyncio.run(publish_at_rate(port, seconds)))
    finally:
        stop.set()
        scraper.join()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"live, {RATE}/s with /metrics scraped every second: {len(latencies):,} PUBACKs, p50 {q[49] * 1e3:.1f} ms,"
        f" p99 {q[98] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.0f} ms; scrape median"
        f" {statistics.median(scrapes) * 1e3:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="summary-scale-", dir="/var/tmp"))
    stack = Stack(work)
    try:
        fill(work / "edge", args.pending)
        live(stack, work / "edge", args.seconds)
    finally:
        stack.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
