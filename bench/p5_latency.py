"""P5 online latency: an app publishes at a fixed rate; time until its `delivered` status arrives.

Measured on fresh databases, and again with a history: the outbox and the ledger already holding
`history` delivered and confirmed intents (a seed run's rows copied with new ids), as a site has after
months of traffic (issue 15: a soak's p99 crept up as the databases grew).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import time
from pathlib import Path

from bench.load import APP, TOPIC
from bench.mqttraw import MqttClient
from bench.p4_fanin import percentile
from bench.procs import CpuWatch, free_port
from bench.report import Figure
from bench.stack import EnrolledPair, Stack, intent_body, wait_linked

SECTION = "P5"


async def _drive(port: int, rate: float, seconds: float, prefix: str = "lat") -> tuple[list[float], int]:
    sent: dict[str, float] = {}
    latencies: list[float] = []
    all_done = asyncio.Event()
    total = int(rate * seconds)

    def on_status(_topic: str, data: bytes) -> None:
        status = json.loads(data)
        if status.get("state") == "delivered":
            at = sent.pop(status["id"], None)
            if at is not None:
                latencies.append(time.monotonic() - at)
                if len(latencies) == total:
                    all_done.set()

    app = await MqttClient.connect("127.0.0.1", port, "bench-latency-app")
    app.on_message = on_status
    await app.subscribe(f"outbox/{APP}/status/#", 1)
    t0 = time.monotonic()
    for n in range(total):
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        intent_id = f"{prefix}-{n}"
        sent[intent_id] = time.monotonic()
        app.publish(TOPIC, intent_body(n, intent_id))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done.wait(), 60)
    await app.close()
    return latencies, total


def _columns(conn: sqlite3.Connection, table: str, skip: set[str]) -> str:
    return ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})") if row[1] not in skip)


def grow_history(db: Path, id_column: str, target: int, extra: tuple[str, ...] = ()) -> int:
    """Copy the delivered rows of `intents` (with new ids in `id_column`), all of them each time, until
    it holds at least `target` rows; the rows of each `extra` table (keyed by `intent_id`) are copied
    with them. Returns the rows `intents` holds."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        have, last = conn.execute("SELECT count(*), max(seq) FROM intents").fetchone()
        seed = f"WHERE seq <= {int(last)} AND state = 'delivered'"
        base = int(conn.execute(f"SELECT count(*) FROM intents {seed}").fetchone()[0])
        if base == 0:
            raise RuntimeError(f"{db.name}: no delivered rows to copy")
        tables = {t: (_columns(conn, t, {"seq", "intent_id"}), _max_seq(conn, t)) for t in extra}
        cols = _columns(conn, "intents", {"seq", id_column})
        conn.execute("BEGIN")
        k = 0
        while have < target:
            conn.execute(
                f"INSERT INTO intents ({id_column}, {cols}) SELECT {id_column} || '-h{k}', {cols} FROM intents {seed}"
            )
            for table, (other, other_last) in tables.items():
                conn.execute(
                    f"INSERT INTO {table} (intent_id, {other}) SELECT intent_id || '-h{k}', {other} FROM {table}"
                    f" WHERE seq <= {other_last}"
                )
            have, k = have + base, k + 1
        if id_column == "id":  # the outbox: the copies' events are old news to apps
            conn.execute(
                "INSERT INTO meta(key, value) SELECT 'status_published_seq', CAST(MAX(seq) AS TEXT) FROM events"
                " WHERE 1 ON CONFLICT(key) DO UPDATE SET value = excluded.value"
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(have)
    finally:
        conn.close()


def _max_seq(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {table}").fetchone()[0])


def _with_history(pair: EnrolledPair, rate: float, history: int) -> tuple[Path, Path]:
    """(bridge dir, edge dir) whose databases hold `history` delivered, confirmed intents: a seed run
    at `rate` for 10 s, its rows then copied."""
    stack = pair.stack
    bridge_dir, edge_dir = pair.fresh("history")
    bridge = pair.start_bridge(bridge_dir)
    port = free_port()
    edge = stack.start_edge(edge_dir, port)
    try:
        wait_linked(edge)
        latencies, total = asyncio.run(_drive(port, rate, 10.0, prefix="seed"))
        if len(latencies) < total:
            raise RuntimeError(f"P5 history seed: {total - len(latencies)} of {total} intents not delivered")
        _wait_confirmed(bridge_dir / "ledger.db")  # the history is of results the edge has confirmed
    finally:
        edge.stop()
        bridge.stop()
    t0 = time.monotonic()
    kept = grow_history(edge_dir / "outbox.db", "id", history)
    rows = grow_history(bridge_dir / "ledger.db", "intent_id", history, extra=("audit",))
    print(f"  P5 history: outbox {kept:,} intents, ledger {rows:,} ({time.monotonic() - t0:.0f} s)", flush=True)
    return bridge_dir, edge_dir


def _wait_confirmed(ledger: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
        try:
            if conn.execute("SELECT count(*) FROM intents WHERE confirmed = 0").fetchone()[0] == 0:
                return
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"P5 history seed: results still unconfirmed after {timeout:.0f} s")


def run(stack: Stack, runs: int, rate: float, seconds: float, history: int = 0) -> list[Figure]:
    pair = EnrolledPair(stack, "p5")
    figures = _measure(pair, runs, rate, seconds, "", None)
    if history:
        bridge_from, edge_from = _with_history(pair, rate, history)
        figures += _measure(pair, runs, rate, seconds, f", {history:,} intents kept", (bridge_from, edge_from))
        stack.discard(pair.root / "history")
    return figures


def _measure(
    pair: EnrolledPair, runs: int, rate: float, seconds: float, kept: str, dirs: tuple[Path, Path] | None
) -> list[Figure]:
    stack = pair.stack
    note = f"{rate:.0f}/s for {seconds:.0f} s"
    # CPU per intent delivered (edge and bridge over the run) goes beside p50, the row that names the rate
    p50 = Figure(
        SECTION, f"publish -> `delivered` status, p50{kept}", "ms", note=note, target="<= 20 ms", higher_is_better=False
    )
    p99 = Figure(SECTION, f"publish -> `delivered` status, p99{kept}", "ms", target="<= 50 ms", higher_is_better=False)
    lost = Figure(SECTION, f"intents without a `delivered` status within 60 s{kept}", "intents", higher_is_better=False)
    for i in range(runs):
        print(f"  P5 run {i}{kept}", flush=True)
        bridge_from, edge_from = dirs if dirs else (None, None)
        bridge_dir, edge_dir = pair.fresh(f"run{i}", edge_from=edge_from, bridge_from=bridge_from)
        bridge = pair.start_bridge(bridge_dir)
        port = free_port()
        edge = stack.start_edge(edge_dir, port)
        wait_linked(edge)
        try:
            cpu = CpuWatch(edge=edge.pid, bridge=bridge.pid)
            latencies, total = asyncio.run(_drive(port, rate, seconds))
            used = cpu.used()
        finally:
            edge.stop()
            bridge.stop()
        if latencies:
            p50.samples.append(statistics.median(latencies) * 1000)
            p50.add_cpu(used, len(latencies))
            p99.samples.append(percentile(latencies, 0.99) * 1000)
        lost.samples.append(float(total - len(latencies)))
        stack.discard(pair.root / f"run{i}")
    return [p50, p99, lost]
