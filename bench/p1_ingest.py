"""P1 durable ingest: QoS 1 publishers into the edge outbox vs plain amqtt vs a Mosquitto bridge pair."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from bench.load import publish_timed
from bench.procs import CpuWatch, Proc, free_port, start_mosquitto
from bench.report import Figure
from bench.stack import EnrolledPair, Stack, edge_counts, intent_body, wait_linked

SECTION = "P1"
EDGE = "edge outbox + live bridge"
EDGE_ALONE = "edge outbox, not enrolled (store only)"
AMQTT = "plain amqtt broker"
MOSQ_DEFAULT = "Mosquitto bridge pair, default persistence"
MOSQ_DURABLE = "Mosquitto bridge pair, autosave on every change"
ATTACH = "edge outbox attached to Mosquitto (committed/s)"
TARGET = ">= 0.5x Mosquitto default persistence"  # issue 15: the edge has its own endpoint now
ATTACH_TARGET = ">= 0.8x Mosquitto default persistence"


def _fig(figs: dict[str, Figure], name: str, pubs: int, peers: tuple[str, ...] = (), target: str = "") -> Figure:
    key = f"{name}, {pubs} pub"
    if key not in figs:
        figs[key] = Figure(SECTION, key, "msgs/s", peers=[f"{p}, {pubs} pub" for p in peers], target=target)
    return figs[key]


def _measure(fig: Figure, port: int, pubs: int, seconds: float, **servers: Proc) -> None:
    """One sample of `fig`: the PUBACK rate, and the CPU each server process spent per message acked."""
    cpu = CpuWatch(**{role: proc.pid for role, proc in servers.items()})
    result = asyncio.run(publish_timed(port, pubs, seconds, intent_body))
    fig.samples.append(result.rate)
    fig.add_cpu(cpu.used(), result.acked)


def run(stack: Stack, mosquitto: str, runs: int, seconds: float, publishers: list[int]) -> list[Figure]:
    figs: dict[str, Figure] = {}
    pair = EnrolledPair(stack, "p1")
    work = stack.work / "p1"
    for pubs in publishers:
        for i in range(runs):
            tag = f"{pubs}pub-run{i}"
            print(f"  P1 {tag}", flush=True)

            # the outbox as deployed: enrolled, forwarding to a live bridge that executes against the sink
            bridge_dir, edge_dir = pair.fresh(tag)
            bridge = pair.start_bridge(bridge_dir)
            port = free_port()
            edge = stack.start_edge(edge_dir, port)
            wait_linked(edge)  # from the listening port, its first ~0.1 s ran as store only
            fig = _fig(figs, EDGE, pubs, (MOSQ_DEFAULT, MOSQ_DURABLE, AMQTT), TARGET)
            _measure(fig, port, pubs, seconds, edge=edge, bridge=bridge)
            edge.stop()
            bridge.stop()

            # store only: no forwarder competing for the 2 cores
            port = free_port()
            alone_dir = work / tag / "alone"
            edge = stack.start_edge(alone_dir, port, name="edge-alone")
            _measure(
                _fig(figs, EDGE_ALONE, pubs, (MOSQ_DEFAULT, MOSQ_DURABLE, AMQTT), TARGET),
                port,
                pubs,
                seconds,
                edge=edge,
            )
            edge.stop()

            port = free_port()
            plain = stack.spawn("amqtt-plain", [sys.executable, "-m", "bench.amqtt_plain", str(port)], port)
            _measure(_fig(figs, AMQTT, pubs), port, pubs, seconds, broker=plain)
            plain.stop()

            for name, persistence in ((MOSQ_DEFAULT, "default"), (MOSQ_DURABLE, "durable")):
                mosquitto_pair(_fig(figs, name, pubs), mosquitto, work / tag / persistence, persistence, pubs, seconds)

            _attach(
                _fig(figs, ATTACH, pubs, (MOSQ_DEFAULT,), ATTACH_TARGET),
                stack,
                mosquitto,
                work / tag / "attach",
                pubs,
                seconds,
            )
            stack.discard(work / tag)
            stack.discard(pair.root / tag)
    order = [EDGE, EDGE_ALONE, AMQTT, MOSQ_DEFAULT, MOSQ_DURABLE, ATTACH]
    return sorted(
        figs.values(), key=lambda f: (int(f.name.rsplit(", ", 1)[1].split()[0]), order.index(f.name.rsplit(", ", 1)[0]))
    )


def mosquitto_pair(fig: Figure, mosquitto: str, work: Path, persistence: str, pubs: int, seconds: float) -> None:
    """One sample of `fig`: the PUBACK rate of a Mosquitto bridged to another, with `persistence` on both."""
    cloud_port, edge_port = free_port(), free_port()
    cloud = start_pair_broker(mosquitto, f"mosq-cloud-{persistence}", work, cloud_port, persistence)
    edge = start_pair_broker(mosquitto, f"mosq-edge-{persistence}", work, edge_port, persistence, cloud_port)
    time.sleep(0.5)  # let the bridge connection come up
    _measure(fig, edge_port, pubs, seconds, edge=edge, cloud=cloud)
    edge.stop()
    cloud.stop()


def start_pair_broker(
    mosquitto: str, name: str, work: Path, port: int, persistence: str, bridge_to: int | None = None
) -> Proc:
    """One Mosquitto of a P1 bridge pair, with no limit on what it queues for a session (`max_queued_messages
    0`, as P6's pair and attach mode's broker): with the default (1,000) the edge Mosquitto acknowledged what
    its bridge could not take yet and then dropped it, and P1 counted those PUBACKs."""
    return start_mosquitto(mosquitto, name, work, port, persistence=persistence, bridge_to=bridge_to, max_queued=0)


def _attach(fig: Figure, stack: Stack, mosquitto: str, work: Path, pubs: int, seconds: float) -> None:
    """Apps publish to Mosquitto (default persistence, unlimited queue); the outbox commits from its session.

    One sample of `fig`: intents committed per second, and CPU per intent committed (to the last commit)."""
    port = free_port()
    broker: Proc = start_mosquitto(mosquitto, "mosq-site", work, port, persistence="default", max_queued=0)
    edge_dir = work / "edge"
    edge = stack.start_edge(edge_dir, None, f"--attach=mqtt://127.0.0.1:{port}", name="edge-attach")
    deadline = time.monotonic() + 30
    # The runner's "attached to" line comes before the subscription: what apps publish before it is not routed.
    while "attached; subscribed" not in edge.tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    cpu = CpuWatch(edge=edge.pid, mosquitto=broker.pid)
    start = time.monotonic()
    result = asyncio.run(publish_timed(port, pubs, seconds, intent_body))
    committed, last_change, seen, used = 0, start, -1, cpu.used()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        committed = edge_counts(edge_dir).get("accepted", 0)
        if committed != seen:
            seen, last_change, used = committed, time.monotonic(), cpu.used()
        if committed >= result.acked or time.monotonic() - last_change > 10:
            break
        time.sleep(0.05)
    edge.stop()
    broker.stop()
    fig.samples.append(committed / (last_change - start))
    fig.add_cpu(used, committed)
