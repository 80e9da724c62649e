"""CPU per intent of the edge and the bridge while a backlog drains to the HTTP sink, optionally under py-spy.

    python -m bench.drain_cpu [N] [--spy DIR] [--concurrency SLOTS] [--accept-only] [--threads]

Fills an enrolled edge with N intents offline (4 publishers), starts the bridge and the edge, and waits
until every result is back at the edge (at most 300 s). Prints each process's CPU per intent, up to the
moment the last intent was accepted at the bridge (as P2's "all accepted" figure counts it) and over the
whole drain, with the rates as P2 counts them. With --accept-only it stops at the first of these.
With --concurrency, the bridge runs that many calls to the sink at once (16 by default, as `bench/run`).
With --spy, py-spy records both processes (`-f raw`: collapsed stacks, one file per process) into DIR.
With --threads, each process's CPU per intent is also printed thread by thread (the threads named as Python
names them, read with `py-spy dump` at the end): which of the event loop, the store's writer and the workers
a change moved.
For a before/after pair, run it twice, once with PYTHONPATH pointing at a checkout of the old tree.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.load import publish_timed
from bench.p2_drain import first_last, watch_drain
from bench.procs import BIN, CpuWatch, free_port, thread_names
from bench.stack import EnrolledPair, Stack, edge_counts, intent_body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=20_000)
    parser.add_argument("--spy", type=Path, help="record both processes with py-spy into this directory")
    parser.add_argument("--concurrency", type=int, default=16, help="the bridge's http.request slots")
    parser.add_argument("--accept-only", action="store_true", help="stop once every intent is accepted at the bridge")
    parser.add_argument("--threads", action="store_true", help="print the CPU per intent of each thread too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drain-cpu-", dir="/var/tmp"))
    stack = Stack(work, http_concurrency=args.concurrency)
    stack.start_sink()
    try:
        pair = EnrolledPair(stack, "drain")
        filled = pair.root / "edge-filled"
        shutil.copytree(pair.edge_tpl, filled)
        port = free_port()
        edge = stack.start_edge(filled, port, "--no-forward", "--max-queue-items", "0", name="edge-fill")
        asyncio.run(publish_timed(port, 4, 3600, intent_body, max_messages=args.n))
        edge.stop()
        backlog = edge_counts(filled).get("accepted", 0)
        bridge_dir, edge_dir = pair.fresh("run", edge_from=filled)
        bridge = pair.start_bridge(bridge_dir)
        t0 = time.monotonic()
        edge = stack.start_edge(edge_dir, free_port(), "--max-queue-items", "0")
        cpu = CpuWatch(edge=edge.pid, bridge=bridge.pid, threads=args.threads)
        spies = []
        if args.spy:
            args.spy.mkdir(parents=True, exist_ok=True)
            for name, pid in (("bridge", bridge.pid), ("edge", edge.pid)):
                command = [
                    str(BIN / "py-spy"),
                    "record",
                    "-p",
                    str(pid),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(args.spy / name),
                ]
                spies.append(subprocess.Popen([*command, "--nonblocking"], stdout=subprocess.DEVNULL))
        used_accepting, used = watch_drain(edge_dir, cpu, backlog, 300, accept_only=args.accept_only)
        took = time.monotonic() - t0
        names = {role: thread_names(pid) for role, pid in cpu.pids.items()} if args.threads else {}
        for spy in spies:
            spy.send_signal(2)
            spy.wait(30)
        first, last, back, n_acc, n_back = first_last(bridge_dir, edge_dir)
        if used_accepting is not None:
            rate = n_acc / max(last - first, 1e-3)
            print(f"all {n_acc:,} accepted at the bridge, {rate:,.0f}/s from the first accept (as P2 counts them);")
            print(f"  CPU per intent until the last accept: {_per_intent(used_accepting, n_acc)}")
            if args.threads:
                print(f"  by thread: {_per_thread(cpu.readings[0], names, n_acc)}")
        else:
            print(f"not every intent was accepted at the bridge within 300 s ({n_acc:,} of {backlog:,})")
        if not args.accept_only:
            delivered = edge_counts(edge_dir).get("delivered", 0)
            rate = n_back / max(back - first, 1e-3)
            print(f"{delivered:,} of {backlog:,} results back in {took:.1f} s, {rate:,.0f}/s from the first accept;")
            print(f"  CPU per intent over the whole drain: {_per_intent(used, delivered)}")
            if args.threads:
                print(f"  by thread: {_per_thread(cpu.readings[-1], names, delivered)}")
    finally:
        stack.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def _per_intent(used: dict[str, float], intents: int) -> str:
    return ", ".join(f"{name} {seconds / max(intents, 1) * 1e6:,.1f} us" for name, seconds in used.items())


def _per_thread(reading: dict[str, dict[int, float]], names: dict[str, dict[int, str]], intents: int) -> str:
    """Each process's threads that used CPU, busiest first: "bridge: MainThread 13.1, ... us; edge: ..."."""
    parts = []
    for role, threads in reading.items():
        busy = sorted(((s, tid) for tid, s in threads.items() if s > 0), reverse=True)
        each = ", ".join(f"{names.get(role, {}).get(tid, tid)} {s / max(intents, 1) * 1e6:,.1f}" for s, tid in busy)
        parts.append(f"{role}: {each} us")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
