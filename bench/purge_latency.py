"""An app's PUBACK wait while the outbox purges a million final intents (edge_outbox.retention).

`python -m bench.purge_latency [ROWS] [RATE] [--cli]`: seeds a database with ROWS (1,000,000) delivered
intents last changed 30 days ago, starts `edge-outbox run --no-forward` on it (the outbox of PYTHONPATH),
publishes RATE (500) intents/s with QoS 1 from one client, and prints the PUBACK waits (p50, p99, max) of
the publishes sent before, while and after the purge ran: while the delivered rows were being deleted, as
a reading connection saw them. With --cli the outbox keeps them (--retention 365d) and `edge-outbox
purge --older-than 7d --yes` deletes them meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.mqttraw import MqttClient
from bench.procs import free_port
from edge_outbox import db


def seed(data_dir: Path, rows: int) -> None:
    conn = db.connect(data_dir)
    old = int(time.time() * 1000) - 30 * 86_400_000
    body = b'{"to":"ops@example.com","subject":"S","text":"boiler 3 hot, please check"}'
    conn.execute("BEGIN")
    conn.execute(
        """WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < ?)
        INSERT INTO intents(id, app, kind, state, priority, created, updated, payload, size)
        SELECT printf('old-%d', n), 'old', 'email.send', 'delivered', 0, ?, ?, ?, ? FROM c""",
        (rows, old, old, body, len(body)),
    )
    conn.execute("DELETE FROM events")  # long pruned on a real site (24 h of history): only the intents go
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def watch(path: Path, marks: dict[str, float], stop: threading.Event) -> None:
    """Mark when the delivered rows start to fall and when none is left."""
    conn = sqlite3.connect(path)
    first = None
    while not stop.is_set():
        (items,) = conn.execute("SELECT COALESCE(SUM(items), 0) FROM stats WHERE state = 'delivered'").fetchone()
        first = items if first is None else first
        if items < first:
            marks.setdefault("start", time.monotonic())
        if items == 0:
            marks.setdefault("end", time.monotonic())
        time.sleep(0.005)
    conn.close()


def quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def drive(data_dir: Path, port: int, rate: float, cli: bool) -> list[tuple[float, float]]:
    for _ in range(400):
        try:
            client = await MqttClient.connect("127.0.0.1", port, "bench-purge")
            break
        except OSError:
            await asyncio.sleep(0.05)
    marks: dict[str, float] = {}
    stop = threading.Event()
    threading.Thread(target=watch, args=(db.db_path(data_dir), marks, stop), daemon=True).start()
    if cli:
        purge = subprocess.Popen([sys.executable, "-m", "edge_outbox", "purge", "--data-dir", str(data_dir),
                                  "--older-than", "7d", "--yes"], stdout=subprocess.DEVNULL)  # fmt: skip
    waits: list[tuple[float, float]] = []

    async def one(n: int) -> None:
        sent = time.monotonic()
        await client.publish(
            "outbox/bench/email.send", json.dumps({"to": "a@example.com", "subject": "S", "text": str(n)}).encode()
        )
        waits.append((sent, time.monotonic() - sent))

    tasks, t0, n = [], time.monotonic(), 0
    while not ("end" in marks and time.monotonic() > marks["end"] + 3) and time.monotonic() - t0 < 300:
        tasks.append(asyncio.create_task(one(n)))
        n += 1
        if (delay := t0 + n / rate - time.monotonic()) > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*tasks)
    stop.set()
    await client.close()
    if cli:
        purge.wait()
    start, end = marks["start"], marks["end"]
    print(f"purge ran {end - start:.2f} s; {rate:.0f} publishes/s")
    for name, chosen in (
        ("before", [w for t, w in waits if t < start]),
        ("while", [w for t, w in waits if start <= t <= end]),
        ("after", [w for t, w in waits if t > end]),
    ):
        ms = [w * 1000 for w in chosen]
        print(f"  {name:6s} {len(ms):6d} PUBACKs  p50 {quantile(ms, 0.5):7.2f} ms  p99 {quantile(ms, 0.99):7.2f} ms"
              f"  max {max(ms or [0]):7.2f} ms")  # fmt: skip
    return waits


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rows = int(args[0]) if args else 1_000_000
    rate = float(args[1]) if len(args) > 1 else 500.0
    cli = "--cli" in sys.argv
    with tempfile.TemporaryDirectory() as work:
        data_dir = Path(work) / "data"
        seed(data_dir, rows)
        port = free_port()
        run = ["--retention", "365d"] if cli else []
        with open(Path(work) / "outbox.log", "w") as log:
            outbox = subprocess.Popen([sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(data_dir),
                                       "--listen", f"127.0.0.1:{port}", "--no-forward", *run],
                                      stderr=log, env=os.environ)  # fmt: skip
            try:
                asyncio.run(drive(data_dir, port, rate, cli))
            finally:
                outbox.terminate()
                outbox.wait()


if __name__ == "__main__":
    main()
