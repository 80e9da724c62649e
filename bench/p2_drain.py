"""P2 backlog drain: a backlog queued while offline, then the link comes up; the edge vs a Mosquitto bridge."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

from bench.load import CountingSubscriber, publish_timed
from bench.procs import CpuWatch, free_port, start_mosquitto
from bench.report import Figure
from bench.stack import EnrolledPair, Stack, edge_counts, intent_body

SECTION = "P2"
ACCEPTED = "edge -> bridge, all accepted (ledger rows committed)"
RESULTS = "edge -> bridge -> HTTP sink, all results back at the edge"
MOSQ_RAISED = "Mosquitto bridge -> subscriber, max_queued_messages 0 (no limit)"
MOSQ_DEFAULT = "Mosquitto bridge -> subscriber, default max_queued_messages 1000"
DELIVERED_SHARE = "Mosquitto default queue: share of the backlog delivered"
EDGE_SHARE = "edge: share of the backlog accepted at the bridge"


def first_last(bridge_dir: Path, edge_dir: Path) -> tuple[float, float, float, int, int]:
    """(first accept, last accept, last result back at the edge) wall times, and how many of each."""
    ledger = sqlite3.connect(f"file:{bridge_dir / 'ledger.db'}?mode=ro", uri=True, timeout=30)
    first, last, n_acc = ledger.execute(
        "SELECT min(at), max(at), count(DISTINCT intent_id) FROM audit WHERE event = 'accept'"
    ).fetchone()
    ledger.close()
    edge = sqlite3.connect(f"file:{edge_dir / 'outbox.db'}?mode=ro", uri=True, timeout=30)
    back, n_back = edge.execute("SELECT max(at), count(*) FROM events WHERE state = 'delivered'").fetchone()
    edge.close()
    return first or 0.0, last or 0.0, (back or 0) / 1000, int(n_acc), int(n_back)


def watch_drain(
    edge_dir: Path, cpu: CpuWatch, backlog: int, seconds: float, *, accept_only: bool = False
) -> tuple[dict[str, float] | None, dict[str, float]]:
    """Poll the edge every half second until all `backlog` results are back (with `accept_only`, until none
    waits for the bridge's accept) or `seconds` have passed; returns the CPU used until none waited for the
    accept (None if some still did) and the CPU used in all."""
    deadline = time.monotonic() + seconds
    accepting: dict[str, float] | None = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        counts = edge_counts(edge_dir)
        if accepting is None and counts and not counts.get("accepted", 0):
            accepting = cpu.used()
            if accept_only:
                break
        if counts.get("delivered", 0) >= backlog:
            break
    return accepting, cpu.used()


def run(stack: Stack, mosquitto: str, runs: int, backlog: int, cap_s: float) -> list[Figure]:
    note = f"{backlog:,} intents, first to last"
    # The targets of issue 15.
    accepted = Figure(SECTION, ACCEPTED, "intents/s", peers=[MOSQ_RAISED], target=">= 0.5x Mosquitto", note=note)
    results = Figure(SECTION, RESULTS, "intents/s", peers=[MOSQ_RAISED], target=">= 10,000/s", note=note)
    edge_share = Figure(SECTION, EDGE_SHARE, "%", note=f"every row fsync-committed; run stopped after {cap_s:.0f} s")
    back_share = Figure(SECTION, "edge: share of the backlog with its result back", "%", note=f"after {cap_s:.0f} s")
    edge_first = Figure(
        SECTION, "edge: link up (outbox start) to the first intent accepted", "s", higher_is_better=False
    )
    fill = Figure(
        SECTION,
        "filling the edge backlog offline (4 publishers)",
        "msgs/s",
        note=f"{backlog:,} intents; one fill, reused",
    )
    raised = Figure(SECTION, MOSQ_RAISED, "msgs/s", note=note)
    default = Figure(SECTION, MOSQ_DEFAULT, "msgs/s", note="rate of what it delivered")
    share = Figure(SECTION, DELIVERED_SHARE, "%", note=f"of {backlog:,}")
    mosq_first = Figure(
        SECTION, "Mosquitto: link up (subscriber ready) to the first message", "s", higher_is_better=False
    )

    pair = EnrolledPair(stack, "p2")
    filled = pair.root / "edge-filled"
    shutil.copytree(pair.edge_tpl, filled)
    port = free_port()
    edge = stack.start_edge(filled, port, "--no-forward", "--max-queue-items", "0", name="edge-fill")
    print(f"  P2 filling the edge with {backlog:,} intents", flush=True)
    cpu = CpuWatch(edge=edge.pid)
    result = asyncio.run(publish_timed(port, 4, 3600, intent_body, max_messages=backlog))
    fill.add_cpu(cpu.used(), result.acked)
    edge.stop()
    backlog = edge_counts(filled).get("accepted", 0)  # 4 racing publishers may add up to 3 more
    fill.samples.append(result.rate)

    for i in range(runs):
        print(f"  P2 run {i}: edge drain (at most {cap_s:.0f} s)", flush=True)
        bridge_dir, edge_dir = pair.fresh(f"run{i}", edge_from=filled)
        bridge = pair.start_bridge(bridge_dir)
        t0 = time.time()
        edge = stack.start_edge(edge_dir, free_port(), "--max-queue-items", "0")
        used_accepting, used = watch_drain(edge_dir, CpuWatch(edge=edge.pid, bridge=bridge.pid), backlog, cap_s)
        edge.stop()
        bridge.stop()
        first, last, back, n_acc, n_back = first_last(bridge_dir, edge_dir)
        edge_share.samples.append(100.0 * n_acc / backlog)
        back_share.samples.append(100.0 * n_back / backlog)
        if n_acc:
            edge_first.samples.append(first - t0)
            accepted.samples.append(n_acc / max(last - first, 1e-3))
            accepted.add_cpu(used_accepting or used, n_acc)
        if n_back:
            results.samples.append(n_back / max(back - first, 1e-3))
            results.add_cpu(used, n_back)
        print(f"  P2 run {i}: {n_acc:,} accepted, {n_back:,} results back", flush=True)
        stack.discard(pair.root / f"run{i}")

        for fig, limit in ((raised, 0), (default, None)):
            print(f"  P2 run {i}: Mosquitto drain, max_queued_messages {limit}", flush=True)
            rate, got, first_s, used = _mosquitto_drain(
                stack.work / "p2" / f"mosq{i}-{limit}", mosquitto, backlog, limit
            )
            fig.samples.append(rate)
            fig.add_cpu(used, got)
            if limit is None:
                share.samples.append(100.0 * got / backlog)
            else:
                mosq_first.samples.append(first_s)
    for fig in (accepted, results):
        if any(x < 100 for x in (edge_share if fig is accepted else back_share).samples):
            fig.note += f"; not all within {cap_s:.0f} s: rate of what arrived"
    return [accepted, results, edge_share, back_share, edge_first, fill, raised, default, share, mosq_first]


def _mosquitto_drain(
    work: Path, mosquitto: str, backlog: int, max_queued: int | None
) -> tuple[float, int, float, dict[str, float]]:
    """Queue `backlog` messages in an edge Mosquitto whose bridge is down, then start the cloud side.

    Returns (msgs/s from the first to the last message, messages received, seconds to the first, CPU
    seconds of both brokers from the cloud side's start to the end of the drain)."""
    cloud_port, edge_port = free_port(), free_port()
    medge = start_mosquitto(mosquitto, "mosq-edge", work, edge_port, max_queued=max_queued, bridge_to=cloud_port)
    asyncio.run(publish_timed(edge_port, 4, 3600, intent_body, max_messages=backlog))

    async def drain() -> tuple[float, int, float, dict[str, float]]:
        cloud = start_mosquitto(mosquitto, "mosq-cloud", work, cloud_port, max_queued=max_queued)
        try:
            cpu = CpuWatch(edge=medge.pid, cloud=cloud.pid)
            sub = await CountingSubscriber().start(cloud_port, "outbox/#")
            t0 = time.monotonic()
            await sub.wait_quiet(backlog, quiet_s=5.0, timeout=600)
            used = cpu.used()
            await sub.close()
            if not sub.count:
                return 0.0, 0, float("nan"), used
            return sub.count / max(sub.last - sub.first, 1e-3), sub.count, sub.first - t0, used
        finally:
            cloud.stop()

    try:
        return asyncio.run(drain())
    finally:
        medge.stop()
        shutil.rmtree(work, ignore_errors=True)
