"""P5 online latency: an app publishes at a fixed rate; time until its `delivered` status arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time

from bench.load import APP, TOPIC
from bench.mqttraw import MqttClient
from bench.p4_fanin import percentile
from bench.procs import CpuWatch, free_port
from bench.report import Figure
from bench.stack import EnrolledPair, Stack, intent_body

SECTION = "P5"


async def _drive(port: int, rate: float, seconds: float) -> tuple[list[float], int]:
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
        intent_id = f"lat-{n}"
        sent[intent_id] = time.monotonic()
        app.publish(TOPIC, intent_body(n, intent_id))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done.wait(), 60)
    await app.close()
    return latencies, total


def run(stack: Stack, runs: int, rate: float, seconds: float) -> list[Figure]:
    pair = EnrolledPair(stack, "p5")
    note = f"{rate:.0f}/s for {seconds:.0f} s"
    # CPU per intent delivered (edge and bridge over the run) goes beside p50, the row that names the rate
    p50 = Figure(SECTION, "publish -> `delivered` status, p50", "ms", note=note, higher_is_better=False)
    p99 = Figure(SECTION, "publish -> `delivered` status, p99", "ms", target="<= 100 ms", higher_is_better=False)
    lost = Figure(SECTION, "intents without a `delivered` status within 60 s", "intents", higher_is_better=False)
    for i in range(runs):
        print(f"  P5 run {i}", flush=True)
        bridge_dir, edge_dir = pair.fresh(f"run{i}")
        bridge = pair.start_bridge(bridge_dir)
        port = free_port()
        edge = stack.start_edge(edge_dir, port)
        deadline = time.monotonic() + 30
        while "bridge link connected" not in edge.tail() and time.monotonic() < deadline:
            time.sleep(0.1)
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
