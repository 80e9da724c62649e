"""P6: what each choice costs and loses while the cloud side is down: offline ingest and a kill -9.

`bench/run --only P6` (section P6 of BENCHMARKS.md and its durability table):

1. Offline ingest (issue 15 item 5): QoS 1 publishers (4) into the edge while the other side is
   down, until the backlog reaches N, with the PUBACK rate in each tenth of it: the outbox (enrolled,
   its bridge down) against a Mosquitto bridge pair whose cloud side is down, Mosquitto in its
   durable setting (autosave on every change, stopped at a time cap) and in its default (autosave
   every 1800 s); CPU per message of the edge process.
2. Durability: the same outage, M messages published with ids, every PUBACK recorded; then kill -9
   of the edge process, restart on the same data, the other side up, and a count of how many of
   the acknowledged messages reach it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import TOPIC, CountingSubscriber
from bench.mqttraw import MqttClient
from bench.procs import CpuWatch, Proc, free_port, start_mosquitto
from bench.report import Figure, Survival
from bench.stack import EnrolledPair, Stack, edge_counts, intent_body

SECTION = "P6"
PUBLISHERS = 4
WINDOW = 100


@dataclass
class Ingest:
    name: str
    backlog: int = 0
    seconds: float = 0.0
    tenths: list[float] = field(default_factory=list)  # PUBACKs/s in each tenth of the backlog
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds of the edge process (`edge`)

    @property
    def rate(self) -> float:
        return self.backlog / self.seconds if self.seconds else 0.0


async def _publish_ids(
    port: int, total: int, start_at: int, on_tenth: list[float], topic: str, seconds: float | None = None
) -> set[int]:
    """Publish `total` intents numbered from `start_at` QoS 1 from PUBLISHERS connections (or for at most
    `seconds`); the numbers whose PUBACK came back."""
    conns = [await MqttClient.connect("127.0.0.1", port, f"dur-{i}-{time.monotonic_ns()}") for i in range(PUBLISHERS)]
    acked: set[int] = set()
    next_n = [start_at]
    tenth = max(1, total // 10)
    mark = [time.monotonic(), 0]
    stop_at = time.monotonic() + seconds if seconds is not None else float("inf")

    async def run(conn: MqttClient) -> None:
        sem = asyncio.Semaphore(WINDOW)
        while True:
            await sem.acquire()
            if next_n[0] >= start_at + total or time.monotonic() >= stop_at:
                sem.release()
                break
            n = next_n[0]
            next_n[0] += 1
            fut = conn.publish(topic, intent_body(n, f"d{n}"))

            def done(f: asyncio.Future[None], n: int = n) -> None:
                sem.release()
                if not f.cancelled() and f.exception() is None:
                    acked.add(n)
                    if len(acked) - mark[1] >= tenth:
                        now = time.monotonic()
                        on_tenth.append((len(acked) - mark[1]) / (now - mark[0]))
                        mark[0], mark[1] = now, len(acked)

            fut.add_done_callback(done)
            if n % 50 == 0:
                await conn.drain()
        for _ in range(WINDOW):
            await asyncio.wait_for(sem.acquire(), 300)

    try:
        await asyncio.gather(*(run(c) for c in conns), return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return acked


def _kill(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)


OUTBOX = "edge outbox, bridge down"
MOSQ_DEFAULT = "Mosquitto bridge pair, cloud down, default persistence"
MOSQ_DURABLE = "Mosquitto bridge pair, cloud down, autosave on every change"


class Runner:
    def __init__(self, stack: Stack, mosquitto: str) -> None:
        self.stack = stack
        self.mosquitto = mosquitto
        self.pair = EnrolledPair(stack, "durability")
        if not stack.sink_port:  # the restarted outbox's bridge executes against it
            stack.start_sink()

    # -- the outbox ------------------------------------------------------------------------------

    def outbox_ingest(self, backlog: int) -> Ingest:
        _bridge_dir, edge_dir = self.pair.fresh("ingest")  # the bridge is never started: it is "down"
        port = free_port()
        edge = self.stack.start_edge(edge_dir, port, name="dur-edge")
        result = Ingest(OUTBOX)
        cpu = CpuWatch(edge=edge.pid)
        started = time.monotonic()
        acked = asyncio.run(_publish_ids(port, backlog, 0, result.tenths, TOPIC))
        result.seconds, result.backlog = time.monotonic() - started, len(acked)
        result.cpu_s = cpu.used()
        edge.stop()
        self.stack.discard(self.pair.root / "ingest")
        return result

    def outbox_survival(self, count: int) -> Survival:
        bridge_dir, edge_dir = self.pair.fresh("survival")
        port = free_port()
        edge = self.stack.start_edge(edge_dir, port, name="dur-edge-kill")
        acked = asyncio.run(_publish_ids(port, count, 0, [], TOPIC))
        _kill(edge)
        bridge = self.pair.start_bridge(bridge_dir)
        restarted = self.stack.start_edge(edge_dir, free_port(), name="dur-edge-restarted")
        deadline = time.monotonic() + 300
        delivered, seen, quiet_since = 0, -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 30:  # 30 s without progress: done
            delivered = edge_counts(edge_dir).get("delivered", 0)
            if delivered >= len(acked):
                break
            if delivered != seen:
                seen, quiet_since = delivered, time.monotonic()
            time.sleep(0.5)
        stored = _stored_ids(edge_dir)
        arrived = len({f"d{n}" for n in acked} & stored)
        restarted.stop()
        bridge.stop()
        self.stack.discard(self.pair.root / "survival")
        return Survival("edge outbox", [len(acked)], [min(arrived, delivered)])

    # -- Mosquitto bridge pairs ------------------------------------------------------------------

    def _pair(self, persistence: str, work: Path) -> tuple[Proc, int, int]:
        cloud_port, edge_port = free_port(), free_port()
        edge = start_mosquitto(
            self.mosquitto, f"mosq-edge-{persistence}", work, edge_port, persistence=persistence,
            bridge_to=cloud_port, max_queued=0,
        )  # fmt: skip
        return edge, edge_port, cloud_port

    def mosquitto_ingest(self, persistence: str, backlog: int, time_cap: float) -> Ingest:
        work = self.stack.work / f"mosq-ingest-{persistence}"
        shutil.rmtree(work, ignore_errors=True)
        edge, edge_port, _cloud = self._pair(persistence, work)  # the cloud broker is never started
        result = Ingest(MOSQ_DURABLE if persistence == "durable" else MOSQ_DEFAULT)
        cpu = CpuWatch(edge=edge.pid)
        started = time.monotonic()
        acked = asyncio.run(_publish_ids(edge_port, backlog, 0, result.tenths, TOPIC, time_cap))
        result.seconds, result.backlog = time.monotonic() - started, len(acked)
        result.cpu_s = cpu.used()
        edge.stop()
        self.stack.discard(work)
        return result

    def mosquitto_survival(self, persistence: str, count: int) -> Survival:
        work = self.stack.work / f"mosq-survival-{persistence}"
        shutil.rmtree(work, ignore_errors=True)
        edge, edge_port, cloud_port = self._pair(persistence, work)
        acked = asyncio.run(_publish_ids(edge_port, count, 0, [], TOPIC))
        _kill(edge)  # right after the last PUBACK, as for the outbox
        cloud = start_collector(self.mosquitto, f"mosq-cloud-{persistence}", work, cloud_port)
        received: set[int] = set()

        async def collect() -> None:
            sub = CountingSubscriber()

            def on_message(_topic: str, payload: bytes) -> None:
                received.add(int(json.loads(payload)["json"]["n"]))

            await sub.start(cloud_port, "outbox/#", "dur-cloud-sub")
            assert sub.client is not None
            sub.client.on_message = on_message
            restarted = start_mosquitto(
                self.mosquitto, f"mosq-edge-{persistence}", work, edge_port, persistence=persistence,
                bridge_to=cloud_port, max_queued=0,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            last, quiet_since = -1, time.monotonic()
            while time.monotonic() < deadline and len(received) < len(acked):
                await asyncio.sleep(0.2)
                if len(received) != last:
                    last, quiet_since = len(received), time.monotonic()
                elif time.monotonic() - quiet_since > 10:
                    break
            await sub.close()
            restarted.stop()

        asyncio.run(collect())
        cloud.stop()
        self.stack.discard(work)
        name = "Mosquitto, autosave on every change" if persistence == "durable" else "Mosquitto, default persistence"
        return Survival(name, [len(acked)], [len(received & acked)])


def start_collector(mosquitto: str, name: str, work: Path, port: int) -> Proc:
    """The cloud Mosquitto that counts what a restarted edge Mosquitto's bridge brings: no persistence, and no
    limit on what it queues for the subscriber (`max_queued_messages 0`). With Mosquitto's default, 1,000, it
    dropped what the bridge brought faster than the subscriber took it (900 of 2,000 in one run), and the loss
    was counted against the edge Mosquitto's persistence."""
    return start_mosquitto(mosquitto, name, work, port, persistence="off", max_queued=0)


def _stored_ids(edge_dir: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{edge_dir / 'outbox.db'}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM intents WHERE state = 'delivered'")}
    finally:
        conn.close()


def run(
    stack: Stack, mosquitto: str, runs: int, backlog: int, kill: int, durable_cap_s: float
) -> tuple[list[Figure], list[Survival]]:
    """P6 figures (offline ingest to `backlog`, durable Mosquitto stopped after `durable_cap_s`) and the
    durability table (`kill` messages acked before the kill -9), configurations interleaved in each run."""
    runner = Runner(stack, mosquitto)
    note = f"4 publishers, to a backlog of {backlog:,}"
    figs = {
        OUTBOX: Figure(SECTION, OUTBOX, "msgs/s", peers=[MOSQ_DURABLE, MOSQ_DEFAULT], note=note),
        MOSQ_DURABLE: Figure(SECTION, MOSQ_DURABLE, "msgs/s", note=note),
        MOSQ_DEFAULT: Figure(SECTION, MOSQ_DEFAULT, "msgs/s", note=note),
    }
    reached: dict[str, list[int]] = {name: [] for name in figs}
    survivals: dict[str, Survival] = {}
    for i in range(runs):
        print(f"  P6 run {i}: offline ingest to {backlog:,}", flush=True)
        ingests = [runner.outbox_ingest(backlog)]
        ingests += [runner.mosquitto_ingest(p, backlog, durable_cap_s) for p in ("durable", "default")]
        for result in ingests:
            fig = figs[result.name]
            fig.samples.append(result.rate)
            fig.tenths.append(result.tenths)
            fig.add_cpu(result.cpu_s, result.backlog)
            reached[result.name].append(result.backlog)
            print(f"  P6 run {i}: {result.name}: {result.backlog:,} in {result.seconds:.1f} s", flush=True)
        print(f"  P6 run {i}: kill -9 after {kill:,} acked", flush=True)
        for s in [runner.outbox_survival(kill)] + [runner.mosquitto_survival(p, kill) for p in ("default", "durable")]:
            survivals.setdefault(s.name, Survival(s.name)).acked += s.acked
            survivals[s.name].arrived += s.arrived
            print(f"  P6 run {i}: {s.name}: {s.acked[0]:,} acked, {s.arrived[0]:,} arrived", flush=True)
    figs[MOSQ_DURABLE].note += f", stopped after {durable_cap_s:.0f} s at the latest"
    for name, counts in reached.items():
        if counts and min(counts) < backlog:
            figs[name].note += f"; reached {statistics.median(counts):,.0f} (median)"
    return list(figs.values()), list(survivals.values())
