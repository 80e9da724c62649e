"""Scale-out: P2 drain and P4 fan-in on PostgreSQL with 1, 2 and 3 bridge nodes beside one SQLite node.

`python -m bench.scale [--runs 3] [--only P2,P4] [--nodes 1,2,3]` writes bench/scale.md (included in
BENCHMARKS.md). Configurations run in turn within each round (sqlite, pg x1, pg x2, pg x3, then again),
so that each ratio compares runs made minutes apart. Devices are spread over the nodes by the port
they are given (device i to node i mod N), as a TCP balancer would; the balancer's own cost is not
measured. Per run it reads, besides the rates: the CPU seconds (user + system, /proc) of every node,
every edge and every PostgreSQL server process, and the write transactions each node committed
(`bridge_store_commits_total`) and the database's `xact_commit`; both are divided by the intents handled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bench.load import publish_timed
from bench.p4_fanin import BATCH_SIZE, WORKERS, enroll_many, spawn_client
from bench.procs import Proc, cli, cpu_seconds, free_port
from bench.stack import Stack, edge_counts, intent_body

PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
OUT = Path(__file__).resolve().parent / "scale.md"


def postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL server process now (backends come and go: take deltas)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        total += cpu_seconds(int(entry))
            except OSError:
                continue
    return total


def metric(metrics_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


@dataclass
class Sample:
    """One run of one configuration."""

    intents: int = 0
    accepted_per_s: float = 0.0
    results_per_s: float = 0.0
    node_cpu: list[float] = field(default_factory=list)
    edge_cpu: list[float] = field(default_factory=list)
    pg_cpu: float = 0.0
    bridge_commits: float = 0.0
    db_commits: float = 0.0


class Store:
    """A template (devices enrolled once) and a fresh copy per run, for SQLite or PostgreSQL."""

    def __init__(self, kind: str, work: Path, registry_db: Path) -> None:
        self.kind, self.work, self.registry_db = kind, work, registry_db
        self.template = f"bench_scale_tpl_{os.getpid()}"
        self.run_db = ""
        if kind == "pg":
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.template}"')
                admin.execute(f'CREATE DATABASE "{self.template}"')
            cli("cloud-bridge", "db", "upgrade", "--store", self.url(self.template))
            copy_devices(registry_db, self.url(self.template))

    def url(self, db: str) -> str:
        return PG_ADMIN.rsplit("/", 1)[0] + f"/{db}"

    def fresh(self, run: str) -> list[str]:
        """Store arguments for the nodes of one run."""
        if self.kind == "sqlite":
            data = self.work / run
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            shutil.copy(self.registry_db, data / "registry.db")
            return ["--data-dir", str(data)]
        self.run_db = f"bench_scale_{os.getpid()}_{run.replace('-', '_')}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.run_db}"')
            admin.execute(f'CREATE DATABASE "{self.run_db}" TEMPLATE "{self.template}"')
        return ["--store", self.url(self.run_db)]

    def db_commits(self) -> float:
        if self.kind == "sqlite":
            return float("nan")
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            row = admin.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.run_db,)
            ).fetchone()
        return float(row[0]) if row else float("nan")

    def accept_span(self, nodes_args: list[str]) -> tuple[float, float, int]:
        """(first accept, last accept, distinct intents accepted) from the audit."""
        query = "SELECT min(at), max(at), count(*) FROM audit WHERE event = 'accept'"
        if self.kind == "sqlite":
            conn = sqlite3.connect(f"file:{Path(nodes_args[1]) / 'ledger.db'}?mode=ro", uri=True, timeout=30)
            first, last, n = conn.execute(query).fetchone()
            conn.close()
        else:
            with psycopg.connect(self.url(self.run_db)) as conn:
                first, last, n = conn.execute(query).fetchone()  # type: ignore[misc]
        return first or 0.0, last or 0.0, int(n or 0)

    def drop_run(self) -> None:
        if self.kind == "pg" and self.run_db:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.run_db}" WITH (FORCE)')

    def close(self) -> None:
        self.drop_run()
        if self.kind == "pg":
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


def copy_devices(registry_db: Path, url: str) -> None:
    """The devices of a SQLite registry into a PostgreSQL store (same ids and keys: same edges)."""
    conn = sqlite3.connect(registry_db)
    rows = conn.execute(
        "SELECT device_id, tenant, name, public_key, key_fingerprint, enrolled_at, revoked_at FROM devices"
    ).fetchall()
    conn.close()
    with psycopg.connect(url) as pg, pg.cursor() as cur:
        cur.executemany(
            "INSERT INTO devices (device_id, tenant, name, public_key, key_fingerprint, enrolled_at, revoked_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


@dataclass
class Nodes:
    procs: list[Proc]
    mqtt: list[int]
    http: list[int]
    metrics: list[int]


def start_nodes(stack: Stack, store_args: list[str], count: int, run: str) -> Nodes:
    env = {**os.environ, "BENCH_SINK_TOKEN": "bench-dummy-token"}
    procs, mqtt, http, metrics = [], [], [], []
    for n in range(count):
        m, h, p = free_port(), free_port(), free_port()
        # A PostgreSQL node still keeps local files (its offline keys) in a data dir: the run's, not the cwd's.
        local = [] if "--data-dir" in store_args else ["--data-dir", str(stack.work / run / f"node-{n}-data")]
        args = [
            str(Path(sys.executable).parent / "cloud-bridge"), "run", *store_args, *local,
            "--config", str(stack.config()),
            "--node-id", f"node-{n}", "--listen", f"127.0.0.1:{m}", "--http-listen", f"127.0.0.1:{h}",
            "--metrics-listen", f"127.0.0.1:{p}",
            "--tls-cert", str(stack.certs / "server.pem"), "--tls-key", str(stack.certs / "server.key"),
        ]  # fmt: skip
        proc = stack.spawn(f"{run}-node-{n}", args, h, env)
        proc.wait_port(m)
        procs.append(proc)
        mqtt.append(m)
        http.append(h)
        metrics.append(p)
    return Nodes(procs, mqtt, http, metrics)


def stop(stack: Stack, procs: list[Proc]) -> None:
    for proc in procs:
        proc.stop()
        stack.procs.remove(proc)


def p2_run(stack: Stack, store: Store, nodes: int, edges: list[Path], backlog: int, run: str, cap_s: float) -> Sample:
    store_args = store.fresh(run)
    pg0 = postgres_cpu_s()
    group = start_nodes(stack, store_args, nodes, run)
    edge_dirs, edge_procs = [], []
    for i, filled in enumerate(edges):
        edge_dir = stack.work / run / f"edge-{i}"
        shutil.rmtree(edge_dir, ignore_errors=True)
        shutil.copytree(filled, edge_dir)
        identity = edge_dir / "identity" / "device.json"
        device = json.loads(identity.read_text())
        device["mqtt_port"] = group.mqtt[i % nodes]
        identity.write_text(json.dumps(device))
        edge_dirs.append(edge_dir)
    total = backlog * len(edges)
    for i, edge_dir in enumerate(edge_dirs):
        edge_procs.append(stack.start_edge(edge_dir, free_port(), "--max-queue-items", "0", name=f"{run}-edge-{i}"))
    deadline = time.time() + cap_s
    while time.time() < deadline and sum(edge_counts(d).get("delivered", 0) for d in edge_dirs) < total:
        time.sleep(0.5)
    sample = Sample(intents=sum(edge_counts(d).get("delivered", 0) for d in edge_dirs))
    if sample.intents < total:  # say what happened before the run's files go
        print(f"   {run}: {sample.intents:,} of {total:,} results back in {cap_s:.0f} s;"
              f" edges {[edge_counts(d) for d in edge_dirs]}", flush=True)  # fmt: skip
        for proc in group.procs:
            problems = [line for line in proc.tail(1_000_000).splitlines() if " WARNING " in line or " ERROR " in line]
            print(f"   {proc.name}: {len(problems)} warnings and errors at the end of its log", *problems[-20:],
                  sep="\n   ", flush=True)  # fmt: skip
    sample.node_cpu = [cpu_seconds(p.pid) for p in group.procs]
    sample.edge_cpu = [cpu_seconds(p.pid) for p in edge_procs]
    sample.bridge_commits = sum(metric(p, "bridge_store_commits_total") for p in group.metrics)
    sample.pg_cpu = postgres_cpu_s() - pg0 if store.kind == "pg" else 0.0
    stop(stack, edge_procs)
    stop(stack, group.procs)
    sample.db_commits = store.db_commits()  # after the nodes' backends exit and report their counts
    first, last, accepted = store.accept_span(store_args)
    sample.accepted_per_s = accepted / max(last - first, 1e-3)
    back = max(_last_result(d) for d in edge_dirs)
    sample.results_per_s = sample.intents / max(back - first, 1e-3)
    store.drop_run()
    stack.discard(stack.work / run)
    return sample


def _last_result(edge_dir: Path) -> float:
    conn = sqlite3.connect(f"file:{edge_dir / 'outbox.db'}?mode=ro", uri=True, timeout=30)
    (at,) = conn.execute("SELECT max(at) FROM events WHERE state = 'delivered'").fetchone()
    conn.close()
    return (at or 0) / 1000


def p4_run(stack: Stack, store: Store, nodes: int, devices: list[tuple[str, str]], batches: int, run: str) -> Sample:
    store_args = store.fresh(run)
    group = start_nodes(stack, store_args, nodes, run)
    work = stack.work / run
    work.mkdir(parents=True, exist_ok=True)
    workers = []
    try:
        for w in range(WORKERS):
            mine = devices[w::WORKERS]
            # Device j of this worker goes to node (w + j * WORKERS) mod N: all devices spread evenly.
            ports = [group.mqtt[(w + j * WORKERS) % nodes] for j in range(len(mine))]
            spec = {"ca": str(stack.certs / "ca.pem"), "ports": ports, "devices": mine, "batches": batches,
                    "batch_size": BATCH_SIZE}  # fmt: skip
            workers.append(spawn_client(work, w, spec))
        for proc, _ in workers:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"a P4 load process did not connect: {line!r}")
        cpu0 = [cpu_seconds(p.pid) for p in group.procs]  # from here on: the load, not the connects
        commits0 = sum(metric(p, "bridge_store_commits_total") for p in group.metrics)
        db0 = store.db_commits()
        pg_start = postgres_cpu_s()
        for proc, _ in workers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc, _ in workers:
            proc.wait(900)
        outs = [json.loads(out.read_text()) for _, out in workers]
        sample = Sample(intents=sum(o["accepted"] for o in outs))
        sample.node_cpu = [cpu_seconds(p.pid) - c for p, c in zip(group.procs, cpu0, strict=True)]
        sample.bridge_commits = sum(metric(p, "bridge_store_commits_total") for p in group.metrics)
        sample.bridge_commits -= commits0
        sample.pg_cpu = postgres_cpu_s() - pg_start if store.kind == "pg" else 0.0
        elapsed = max(o["last"] for o in outs) - min(o["first"] for o in outs)
        sample.accepted_per_s = sample.intents / max(elapsed, 1e-3)
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop(stack, group.procs)
    sample.db_commits = store.db_commits() - db0  # after the nodes' backends exit and report their counts
    store.drop_run()
    stack.discard(work)
    return sample


def fill_edges(stack: Stack, registry_work: Path, count: int, backlog: int) -> tuple[Path, list[Path]]:
    """`count` edges enrolled with one SQLite bridge, each filled offline with `backlog` intents."""
    mqtt, http = free_port(), free_port()
    bridge = stack.start_bridge(registry_work, mqtt, http, name="scale-enroll-bridge")
    edges = []
    try:
        for i in range(count):
            edge = stack.work / "p2-templates" / f"edge-{i}"
            stack.enroll_edge(registry_work, edge, http, name=f"edge-{i}")
            edges.append(edge)
    finally:
        bridge.stop()
        stack.procs.remove(bridge)
    for i, edge in enumerate(edges):
        port = free_port()
        proc = stack.start_edge(edge, port, "--no-forward", "--max-queue-items", "0", name=f"fill-{i}")
        asyncio.run(publish_timed(port, 4, 3600, intent_body, max_messages=backlog))
        proc.stop()
        stack.procs.remove(proc)
    return registry_work / "registry.db", edges


def med(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def table(title: str, results: dict[str, list[Sample]], edges_per_node: bool) -> list[str]:
    base = med([s.accepted_per_s for s in results.get("sqlite x1", [])])
    lines = [
        f"### {title}",
        "",
        "| store x nodes | accepted/s (range) | vs SQLite | results/s | CPU ms/intent: nodes (each) | "
        + ("edges | " if edges_per_node else "")
        + "PostgreSQL | node commits/intent | database commits/intent |",
        "|---|---:|---:|---:|---:|" + ("---:|" if edges_per_node else "") + "---:|---:|---:|",
    ]
    for name, samples in results.items():
        rates = [s.accepted_per_s for s in samples]
        node_ms = [1000 * sum(s.node_cpu) / max(s.intents, 1) for s in samples]
        each = [1000 * c / max(s.intents, 1) for s in samples for c in s.node_cpu]
        edge_ms = [1000 * sum(s.edge_cpu) / max(s.intents, 1) for s in samples]
        pg_ms = [1000 * s.pg_cpu / max(s.intents, 1) for s in samples]
        commits = [s.bridge_commits / max(s.intents, 1) for s in samples]
        db = [s.db_commits / max(s.intents, 1) for s in samples]
        results_rate = fmt(med([s.results_per_s for s in samples])) if edges_per_node else "-"
        row = [
            name,
            f"{fmt(med(rates))} ({fmt(min(rates))} - {fmt(max(rates))})",
            f"{med(rates) / base:.2f}x" if base == base and base else "-",
            results_rate,
            f"{fmt(med(node_ms), 2)} ({fmt(med(each), 2)})",
            *([fmt(med(edge_ms), 2)] if edges_per_node else []),
            fmt(med(pg_ms), 2) if name.startswith("pg") else "-",
            fmt(med(commits), 3),
            fmt(med(db), 3) if name.startswith("pg") else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="P2,P4")
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts")
    parser.add_argument("--stores", default="sqlite,pg", help="which stores (e.g. one, for farm-bench --vs)")
    parser.add_argument("--edges", type=int, default=3, help="P2: edges, each with its own backlog")
    parser.add_argument("--backlog", type=int, default=3000, help="P2: intents queued in each edge")
    parser.add_argument("--devices", type=int, default=300, help="P4: simulated devices")
    parser.add_argument("--batches", type=int, default=5, help="P4: batches of 20 per device")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")}
    stores_wanted = {s.strip() for s in args.stores.split(",")}
    configs = [("sqlite", 1)] if "sqlite" in stores_wanted else []
    configs += [("pg", int(n)) for n in args.nodes.split(",")] if "pg" in stores_wanted else []
    work = Path(tempfile.mkdtemp(prefix="edge-bench-scale-", dir="/var/tmp"))
    stack = Stack(work)
    stack.start_sink()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sections: list[str] = []
    stores: list[Store] = []
    try:
        if "P2" in only:
            print(f"P2: enrolling and filling {args.edges} edges with {args.backlog:,} intents each", flush=True)
            registry_db, edges = fill_edges(stack, work / "p2-registry", args.edges, args.backlog)
            by_kind = {k: Store(k, work / f"p2-{k}", registry_db) for k in sorted({c[0] for c in configs})}
            stores += by_kind.values()
            p2: dict[str, list[Sample]] = {f"{k} x{n}": [] for k, n in configs}
            for r in range(args.runs):
                for kind, n in configs:
                    print(f"P2 run {r}: {kind} x{n}", flush=True)
                    sample = p2_run(stack, by_kind[kind], n, edges, args.backlog, f"p2-{kind}{n}-{r}", 180)
                    p2[f"{kind} x{n}"].append(sample)
                    print(f"   {sample}", flush=True)
            sections += table(
                f"P2 drain: {args.edges} edges x {args.backlog:,} queued http.request intents, edge i on node i mod N",
                p2,
                True,
            )
        if "P4" in only:
            print(f"P4: enrolling {args.devices} devices", flush=True)
            devices = enroll_many(work / "p4-registry", args.devices)
            registry_db = work / "p4-registry" / "registry.db"
            by_kind = {k: Store(k, work / f"p4-{k}", registry_db) for k in sorted({c[0] for c in configs})}
            stores += by_kind.values()
            p4: dict[str, list[Sample]] = {f"{k} x{n}": [] for k, n in configs}
            for r in range(args.runs):
                for kind, n in configs:
                    print(f"P4 run {r}: {kind} x{n}", flush=True)
                    sample = p4_run(stack, by_kind[kind], n, devices, args.batches, f"p4-{kind}{n}-{r}")
                    p4[f"{kind} x{n}"].append(sample)
                    print(f"   {sample}", flush=True)
            sections += table(
                f"P4 fan-in: {args.devices} TLS devices x {args.batches} batches of {BATCH_SIZE},"
                " device i on node i mod N",
                p4,
                False,
            )
    finally:
        stack.stop_all()
        for store in stores:
            store.close()
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"Written by `{command.strip()}` on {started}; {args.runs} runs of each configuration, interleaved.",
        f"Machine: {os.cpu_count()} cores shared with other work; load average at the end "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + ".",
        "",
    ]
    args.out.write_text("\n".join(header + sections))
    print("\n".join(header + sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
