"""P4 bridge fan-in: many devices over MQTT/TLS with their own JWTs; accepted intents/s and time to `accepted`."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import CpuWatch, free_port
from bench.report import Figure
from bench.stack import TENANT, Stack, ledger_counts
from cloud_bridge.registry_sqlite import SqliteRegistry
from intent_contract.device_token import generate_private_key_pem, public_key_pem

SECTION = "P4"
WORKERS = 2  # load processes (the machine has 2 cores; the bridge is a single process)
BATCH_SIZE = 20


def enroll_many(data_dir: Path, count: int) -> list[tuple[str, str]]:
    """Enroll `count` devices in a bridge registry (codes redeemed as POST /v1/enroll would); (id, key PEM)."""
    registry = SqliteRegistry(data_dir / "registry.db")
    registry.open()
    now = time.time()
    devices = []
    for i in range(count):
        key = generate_private_key_pem()
        code = registry.create_code(TENANT, f"sim-{i}", 3600, now)
        device = registry.redeem(code, public_key_pem(key), now)
        devices.append((device.device_id, key.decode()))
    return devices


def spawn_client(root: Path, worker: int, spec: dict[str, object]) -> tuple[subprocess.Popen[str], Path]:
    """Start one load process (bench.p4_client) with `spec`; (process, path of its results)."""
    path = root / f"spec{worker}.json"
    path.write_text(json.dumps(spec))
    out = root / f"out{worker}.json"
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.p4_client", str(path), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, out


def connect_rate(devices: int, outs: list[dict[str, Any]]) -> float:
    """Devices connected and subscribed per second: from the first connect of any load process to the last SUBACK
    of any (wall times each process records). Not from their spawn: Python's start and the imports of each load
    process (0.15-0.3 s on 2 cores) are no part of the bridge's connects."""
    return devices / max(max(o["connected"] for o in outs) - min(o["connect_start"] for o in outs), 1e-9)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` quantile: the smallest value that `q` of the values are at or under (p99 of 100
    values is the 99th; `int(q * n)` took the next one up, the maximum)."""
    ordered = sorted(values)
    rank = math.ceil(round(q * len(ordered), 9))  # round: 0.29 * 100 is 28.999999999999996 in floats
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def run(stack: Stack, runs: int, devices: int, batches: int) -> list[Figure]:
    root = stack.work / "p4"
    template = root / "bridge-template"
    print(f"  P4 enrolling {devices:,} devices", flush=True)
    enrolled = enroll_many(template, devices)
    per_device = batches * BATCH_SIZE
    note = f"{devices:,} devices x {batches} batches of {BATCH_SIZE}"
    rate = Figure(SECTION, "accepted intents/s", "intents/s", note=note, target=">= 5,000/s with 1,000 devices")
    p50 = Figure(SECTION, "time to `accepted` ack, p50", "ms", higher_is_better=False)
    p99 = Figure(SECTION, "time to `accepted` ack, p99", "ms", higher_is_better=False)
    connect = Figure(SECTION, "connect + subscribe all devices (TLS, JWT)", "connects/s", note=f"{devices:,} devices")
    for i in range(runs):
        print(f"  P4 run {i}", flush=True)
        data = root / f"run{i}"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(template, data)
        mqtt_port, http_port = free_port(), free_port()
        bridge = stack.start_bridge(data, mqtt_port, http_port, name="bridge-p4")
        workers = []
        try:
            for w in range(WORKERS):
                spec = {"ca": str(stack.certs / "ca.pem"), "port": mqtt_port, "devices": enrolled[w::WORKERS],
                        "batches": batches, "batch_size": BATCH_SIZE}  # fmt: skip
                workers.append(spawn_client(root, w, spec))
            for proc, _ in workers:
                line = proc.stdout.readline() if proc.stdout else ""
                if line.strip() != "ready":
                    raise RuntimeError(f"a P4 load process did not connect its devices: {line!r}; {bridge.tail()}")
            cpu = CpuWatch(bridge=bridge.pid)  # from here on: the load, not the connects
            for proc, _ in workers:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc, _ in workers:
                proc.wait(900)
            used = cpu.used()
            outs = [json.loads(out.read_text()) for _, out in workers]
        finally:
            for proc, _ in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            bridge.stop()
        connect.samples.append(connect_rate(devices, outs))
        accepted = sum(o["accepted"] for o in outs)
        errors = sum(o["error_count"] for o in outs)
        if errors or accepted < devices * per_device:
            detail = [e for o in outs for e in o["errors"]][:3]
            print(f"  P4 run {i}: {accepted} accepted of {devices * per_device}, {errors} device errors {detail}")
        elapsed = max(o["last"] for o in outs) - min(o["first"] for o in outs)
        rate.samples.append(accepted / elapsed)
        rate.add_cpu(used, accepted)
        lat = [x for o in outs for x in o["latencies"]]
        p50.samples.append(statistics.median(lat) * 1000)
        p99.samples.append(percentile(lat, 0.99) * 1000)
        rows = sum(ledger_counts(data).values())
        print(f"  P4 run {i}: {accepted:,} accepted in {elapsed:.1f}s; ledger rows {rows:,}", flush=True)
        stack.discard(data)
    return [rate, p50, p99, connect]
