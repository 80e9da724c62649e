"""What fleet health costs the bridge: the hooks on its hot paths, and the store calls, on both backends.

`python -m bench.fleet [--devices 2000]` prints (median of 5 repetitions):
- CPU per call of the desk's hooks: a CONNECT's sighting (`connected`), counting a 500-intent batch's
  volume (`intents`), taking a health report (`submit`: decode and keep);
- wall time of one `flush` writing a connect, a report (kept in history) and a volume bucket for each
  of N devices, and of the heartbeat-only flush an idle node makes every 5 s;
- wall time of the reads behind `devices ls` (states, nodes, fleet-wide telemetry) with a week of
  hourly telemetry for every device, every device busy enough (VOLUME_FLOOR) to have its week summed,
  and of the diagnose-request poll each node makes twice a second.
SQLite in a temporary directory; PostgreSQL in a fresh database on OUTBOX_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/postgres), skipped when unreachable. docs/fleet.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry

from cloud_bridge.fleet import Flush, Received, Sighting, hour_of
from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.store import Store, open_store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Envelope
from intent_contract.device_wire import ErrorLine, HealthReport, LinkStats, encode_health

REPEATS = 5
PG_ADMIN = os.environ.get("OUTBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def report(now_ms: int) -> HealthReport:
    states = ("accepted", "forwarded", "delivered", "failed", "expired", "cancelled", "rejected")
    return HealthReport(
        at=now_ms, software="0.1.0", counts=dict.fromkeys(states, 12), sizes=dict.fromkeys(states, 3000), pending=24,
        pending_bytes=6000, oldest_pending_age_ms=90_000, max_items=1_000_000, max_bytes=1 << 30, db_bytes=1 << 24,
        free_bytes=1 << 34, held=0, held_for_ms=None, held_reason="",
        link=LinkStats("connected", 60_000, 9, 9, 0.2, 3, 1),
        last_error=ErrorLine(60_000, "bridge_unreachable", "bridge unreachable: [Errno 111] Connection refused"),
        clock_offset_ms=-12,
    )  # fmt: skip


def median_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cpu_us(count: int, fn: Callable[[], object]) -> float:
    runs = []
    for _ in range(REPEATS):
        start = time.process_time()
        fn()
        runs.append((time.process_time() - start) / count * 1e6)
    return statistics.median(runs)


def show(label: str, value: float, unit: str, note: str = "") -> None:
    print(f"  {label:<58}{value:9.2f} {unit}{note}")


def hooks() -> None:
    desk = FleetDesk(open_store(StoreUrl.sqlite(Path(tempfile.mkdtemp())), node="bench").fleet, node="bench",
                     devices=list, metrics=CollectorRegistry())  # fmt: skip
    now_ms = int(time.time() * 1000)
    batch = [Envelope(f"i{n}", "app", "email.send", now_ms - n * 1000, None, 1, {}) for n in range(500)]
    health = encode_health(report(now_ms))
    print("the desk's hooks, CPU per call:")
    show(
        "connected (one CONNECT)",
        cpu_us(10_000, lambda: [desk.connected("d", "192.0.2.7", 1.0) for _ in range(10_000)]),
        "us",
    )
    show("intents (one 500-intent batch)", cpu_us(200, lambda: [desk.intents("d", batch) for _ in range(200)]), "us")

    async def submit() -> float:
        clock = iter(range(10**9))
        desk._clock = lambda: float(next(clock) * 10)  # past the per-device report gap each time
        return cpu_us(2000, lambda: [desk.submit("d", "health", health) for _ in range(2000)])

    show("submit (one health report)", asyncio.run(submit()), "us", f" ({len(health)} bytes)")


def opened(url: StoreUrl) -> Store:
    store = open_store(url, node="bench")
    store.migrate(True)
    store.registry.open()
    store.fleet.open()
    return store


def measure(name: str, store: Store, devices: int) -> None:
    fleet, now = store.fleet, time.time()
    ids = [f"dev-{n:06d}" for n in range(devices)]
    week = {(d, hour_of(now) - 2 - h): 20 for d in ids for h in range(168)}
    for start in range(0, len(ids), 500):  # a week of telemetry, written in slices as flushes would
        chunk = set(ids[start : start + 500])
        fleet.flush(Flush("bench", now, volume={k: v for k, v in week.items() if k[0] in chunk}))
    rep = report(int(now * 1000))

    def busy_flush() -> None:
        t = time.time()
        fleet.flush(Flush(
            "bench", t, sightings=tuple(Sighting(d, t, "192.0.2.7") for d in ids),
            reports=tuple(Received(d, t, rep, history=True) for d in ids), held=tuple(ids),
            volume={(d, hour_of(t)): 150 for d in ids},  # every device busy enough to be judged for volume
        ))  # fmt: skip

    print(f"\n{name}, {devices} devices, a week of hourly telemetry each ({len(week)} rows), wall time:")
    show("flush: a connect, a report, a volume bucket per device", median_ms(busy_flush), "ms")
    show(
        "flush: heartbeat only (an idle node, every 5 s)", median_ms(lambda: fleet.flush(Flush("b", time.time()))), "ms"
    )
    show("devices ls reads: states, nodes, fleet-wide telemetry", median_ms(lambda: ls_reads(store)), "ms")
    show("diagnose-request poll (none pending; twice a second)", median_ms(lambda: fleet.pending(now - 60)), "ms")


def ls_reads(store: Store) -> object:
    return store.fleet.states(), store.fleet.nodes(), store.fleet.telemetry(time.time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    devices = parser.parse_args().devices
    hooks()
    with tempfile.TemporaryDirectory() as directory:
        measure("SQLite", opened(StoreUrl.sqlite(Path(directory))), devices)
    name = f"bench_fleet_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        print(f"\nPostgreSQL skipped: {str(exc).strip().splitlines()[0]}")
        return
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        store = opened(StoreUrl.parse(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"))
        measure("PostgreSQL", store, devices)
        store.registry.close()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
