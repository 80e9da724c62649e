"""P2 backlog drain: a backlog queued while offline, then the link comes up; the edge vs a Mosquitto bridge."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from bench.load import CountingSubscriber, publish_timed
from bench.procs import free_port, start_mosquitto
from bench.report import Figure
from bench.stack import EnrolledPair, Stack, edge_counts, intent_body, ledger_counts

SECTION = "P2"
ACCEPTED = "edge -> bridge, all accepted (ledger rows committed)"
RESULTS = "edge -> bridge -> HTTP sink, all results back at the edge"
MOSQ_RAISED = "Mosquitto bridge -> subscriber, max_queued_messages 0 (no limit)"
MOSQ_DEFAULT = "Mosquitto bridge -> subscriber, default max_queued_messages 1000"
DELIVERED_SHARE = "Mosquitto default queue: share of the backlog delivered"
EDGE_SHARE = "edge: share of the backlog accepted at the bridge"


def run(stack: Stack, mosquitto: str, runs: int, backlog: int) -> list[Figure]:
    note = f"{backlog:,} intents"
    accepted = Figure(SECTION, ACCEPTED, "intents/s", peers=[MOSQ_RAISED], target=">= 1.0x Mosquitto", note=note)
    results = Figure(SECTION, RESULTS, "intents/s", peers=[MOSQ_RAISED], note=note)
    fill = Figure(SECTION, "filling the edge backlog offline (4 publishers)", "msgs/s", note=note)
    edge_share = Figure(SECTION, EDGE_SHARE, "%", note="every row fsync-committed")
    raised = Figure(SECTION, MOSQ_RAISED, "msgs/s", note=note)
    default = Figure(SECTION, MOSQ_DEFAULT, "msgs/s", note="rate of what it delivered")
    share = Figure(SECTION, DELIVERED_SHARE, "%", note=f"of {backlog:,}")

    pair = EnrolledPair(stack, "p2")
    filled = pair.root / "edge-filled"
    shutil.copytree(pair.edge_tpl, filled)
    port = free_port()
    edge = stack.start_edge(filled, port, "--no-forward", "--max-queue-items", "0", name="edge-fill")
    print(f"  P2 filling the edge with {backlog:,} intents", flush=True)
    result = asyncio.run(publish_timed(port, 4, 3600, intent_body, max_messages=backlog))
    edge.stop()
    stored = edge_counts(filled).get("accepted", 0)
    if stored < backlog:
        raise RuntimeError(f"the edge stored {stored} of {backlog} intents while filling")
    fill.samples.append(result.rate)

    for i in range(runs):
        print(f"  P2 run {i}: edge drain", flush=True)
        bridge_dir, edge_dir = pair.fresh(f"run{i}", edge_from=filled)
        bridge = pair.start_bridge(bridge_dir)
        t0 = time.monotonic()
        edge = stack.start_edge(edge_dir, free_port(), "--max-queue-items", "0")
        t_accepted = t_results = None
        rows = 0
        deadline = t0 + 900
        while time.monotonic() < deadline and t_results is None:
            time.sleep(0.2)
            now = time.monotonic()
            if t_accepted is None:
                rows = sum(ledger_counts(bridge_dir).values())
                if rows >= backlog:
                    t_accepted = now
            if edge_counts(edge_dir).get("delivered", 0) >= backlog:
                t_results = now
        rows = sum(ledger_counts(bridge_dir).values())
        edge.stop()
        bridge.stop()
        edge_share.samples.append(100.0 * rows / backlog)
        if t_accepted is not None:
            accepted.samples.append(backlog / (t_accepted - t0))
        if t_results is not None:
            results.samples.append(backlog / (t_results - t0))
        stack.discard(pair.root / f"run{i}")

        for fig, limit in ((raised, 0), (default, None)):
            print(f"  P2 run {i}: Mosquitto drain, max_queued_messages {limit}", flush=True)
            rate, got = _mosquitto_drain(stack.work / "p2" / f"mosq{i}-{limit}", mosquitto, backlog, limit)
            fig.samples.append(rate)
            if limit is None:
                share.samples.append(100.0 * got / backlog)
    return [accepted, results, edge_share, fill, raised, default, share]


def _mosquitto_drain(work: Path, mosquitto: str, backlog: int, max_queued: int | None) -> tuple[float, int]:
    """Queue `backlog` messages in an edge Mosquitto whose bridge is down, start the cloud; (msgs/s, received)."""
    cloud_port, edge_port = free_port(), free_port()
    medge = start_mosquitto(mosquitto, "mosq-edge", work, edge_port, max_queued=max_queued, bridge_to=cloud_port)
    asyncio.run(publish_timed(edge_port, 4, 3600, intent_body, max_messages=backlog))

    async def drain() -> tuple[float, int]:
        cloud = start_mosquitto(mosquitto, "mosq-cloud", work, cloud_port, max_queued=max_queued)
        try:
            sub = await CountingSubscriber().start(cloud_port, "outbox/#")
            t0 = time.monotonic()
            await sub.wait_quiet(backlog, quiet_s=5.0, timeout=600)
            await sub.close()
            return (sub.count / (sub.last - t0) if sub.count else 0.0), sub.count
        finally:
            cloud.stop()

    try:
        return asyncio.run(drain())
    finally:
        medge.stop()
        shutil.rmtree(work, ignore_errors=True)
