"""P1, store only, in one short run: the outbox's endpoint beside a plain amqtt broker and Mosquitto.

`python -m bench.p1_store [RUNS]`: QoS 1 publishers (1 and 4) for 4 s against each, interleaved, with
the CPU time each server process spent per acknowledged message beside the rate. The full
`bench/run` does the same inside a larger run; this is the quick check for a change to intake.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from bench.load import publish_timed
from bench.procs import Proc, cpu_seconds, free_port
from bench.stack import intent_body

SECONDS = 4.0


def _server(kind: str, port: int, work: Path) -> Proc:
    python = sys.executable
    args = {
        "outbox": [
            python,
            "-m",
            "edge_outbox",
            "run",
            "--data-dir",
            str(work / "data"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        "amqtt": [python, "-m", "bench.amqtt_plain", str(port)],
        "mosquitto": ["mosquitto", "-p", str(port)],
    }[kind]
    return Proc(kind, args, work).wait_port(port)


def main(runs: int) -> None:
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(runs):
        for pubs in (1, 4):
            for kind in ("outbox", "amqtt", "mosquitto"):
                with tempfile.TemporaryDirectory() as tmp:
                    port = free_port()
                    server = _server(kind, port, Path(tmp))
                    before = cpu_seconds(server.pid)
                    result = asyncio.run(publish_timed(port, pubs, SECONDS, intent_body))
                    used = cpu_seconds(server.pid) - before
                    server.stop()
                per_msg_us = used / max(result.acked, 1) * 1e6
                results.setdefault((kind, pubs), []).append((result.rate, per_msg_us))
                print(f"  {kind} {pubs} pub: {result.rate:,.0f} msgs/s, {per_msg_us:.1f} us CPU/msg", flush=True)
    for (kind, pubs), samples in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rates = [s[0] for s in samples]
        cpu = statistics.median(s[1] for s in samples)
        print(
            f"{kind:10} {pubs} pub: {statistics.median(rates):8,.0f} msgs/s "
            f"(range {min(rates):,.0f}-{max(rates):,.0f}), {cpu:.1f} us CPU/msg in the server"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
