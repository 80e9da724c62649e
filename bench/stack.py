"""The product under test, started the way an operator would: bridge with dev certs, HTTP sink, edge outbox."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from bench.procs import BIN, Proc, cli, free_port

TENANT = "bench"
SINK_TOKEN_ENV = "BENCH_SINK_TOKEN"  # the 'provider key' the bridge injects; a dummy value


def intent_body(n: int, app_id: str | None = None) -> bytes:
    """One http.request intent as an app publishes it (JSON)."""
    body: dict[str, object] = {"credential": "sink", "method": "POST", "path": "/hook", "json": {"n": n}}
    if app_id is not None:
        body["id"] = app_id
    return json.dumps(body).encode()


def payload(n: int) -> dict[str, object]:
    """The same intent as a payload dict inside a wire envelope."""
    return {"credential": "sink", "method": "POST", "path": "/hook", "json": {"n": n}}


class Stack:
    """Certificates, config and processes for one benchmark; `stop_all` stops what it started."""

    def __init__(self, work: Path, *, keep: bool = False, http_concurrency: int = 16) -> None:
        self.work = work
        self.keep = keep  # keep each run's databases and logs (for looking into a result)
        self.procs: list[Proc] = []
        self.certs = work / "certs"
        if not (self.certs / "server.pem").exists():
            cli("cloud-bridge", "dev-certs", str(self.certs))
        self.sink_port = 0
        self.http_concurrency = http_concurrency  # the bridge's [integrations.http] concurrency: slots for the sink

    def spawn(self, name: str, args: list[str], port: int | None, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, args, self.work, env)
        self.procs.append(proc)
        if port is not None:
            proc.wait_port(port)
        return proc

    def start_sink(self) -> Proc:
        self.sink_port = free_port()
        return self.spawn("httpsink", [sys.executable, "-m", "bench.httpsink", str(self.sink_port)], self.sink_port)

    def config(self) -> Path:
        path = self.work / "bridge.toml"
        path.write_text(
            f'[integrations.http]\nconcurrency = {self.http_concurrency}\nallow_private_hosts = ["127.0.0.1"]\n'
            "[integrations.http.credentials.sink]\n"
            f'base_urls = ["http://127.0.0.1:{self.sink_port}/"]\nmethods = ["POST"]\n'
            f'auth = "bearer"\ntoken_env = "{SINK_TOKEN_ENV}"\n\n'
            f'[tenants.{TENANT}.policy]\nkinds = ["http.request"]\nhttp_credentials = ["sink"]\n'
        )
        return path

    def start_bridge(self, data_dir: Path, mqtt_port: int, http_port: int, name: str = "bridge") -> Proc:
        env = {**os.environ, SINK_TOKEN_ENV: "bench-dummy-token"}
        args = [
            str(BIN / "cloud-bridge"), "run", "--data-dir", str(data_dir), "--config", str(self.config()),
            "--listen", f"127.0.0.1:{mqtt_port}", "--http-listen", f"127.0.0.1:{http_port}",
            "--tls-cert", str(self.certs / "server.pem"), "--tls-key", str(self.certs / "server.key"),
        ]  # fmt: skip
        proc = self.spawn(name, args, http_port, env)
        proc.wait_port(mqtt_port)
        return proc

    def enroll_edge(self, bridge_data: Path, edge_data: Path, http_port: int, name: str = "edge") -> str:
        """Enroll an edge data dir with a running bridge; returns the device id."""
        code = json.loads(
            cli(
                "cloud-bridge",
                "devices",
                "enroll-code",
                "--data-dir",
                str(bridge_data),
                "--tenant",
                TENANT,
                "--name",
                name,
                "--ttl",
                "1h",
                "--json",
            )
        )["code"]
        cli(
            "edge-outbox", "enroll", "--data-dir", str(edge_data), "--bridge", f"https://127.0.0.1:{http_port}",
            "--code", code, "--ca", str(self.certs / "ca.pem"),
        )  # fmt: skip
        identity = json.loads((edge_data / "identity" / "device.json").read_text())
        return str(identity["device_id"])

    def start_edge(self, data_dir: Path, port: int | None, *extra: str, name: str = "edge") -> Proc:
        args = [str(BIN / "edge-outbox"), "run", "--data-dir", str(data_dir), *extra]
        if port is not None:
            args += ["--listen", f"127.0.0.1:{port}"]
        return self.spawn(name, args, port)

    def discard(self, path: Path) -> None:
        """Remove a finished run's directory (unless keeping them)."""
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def wait_linked(edge: Proc, timeout: float = 30.0) -> None:
    """Until an enrolled outbox logs that its link to the bridge is up. RuntimeError (with its log) when it
    exits first or `timeout` passes: a figure "with the bridge" measured without it is another figure."""
    deadline = time.monotonic() + timeout
    while "bridge link connected" not in edge.tail(1 << 20):
        if edge.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{edge.name}: no link to the bridge; log:\n{edge.tail()}")
        time.sleep(0.05)


def edge_counts(data_dir: Path) -> dict[str, int]:
    """Intents per state in an edge outbox database (its O(1) stats table)."""
    if not (data_dir / "outbox.db").exists():
        return {}
    conn = sqlite3.connect(f"file:{data_dir / 'outbox.db'}?mode=ro", uri=True, timeout=30)
    try:
        return {state: int(items) for state, items in conn.execute("SELECT state, items FROM stats")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def ledger_counts(data_dir: Path) -> dict[str, int]:
    """Ledger rows per state at the bridge (every row is fsync-committed before its `accepted` ack)."""
    path = data_dir / "ledger.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {state: int(n) for state, n in conn.execute("SELECT state, count(*) FROM intents GROUP BY state")}
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


class EnrolledPair:
    """One bridge data dir with one enrolled edge, made once and copied for every run.

    The ports are fixed at enrollment (the edge keeps the bridge's address), so every run's bridge
    listens on the same ports; runs never overlap.
    """

    def __init__(self, stack: Stack, name: str = "pair") -> None:
        self.stack = stack
        self.root = stack.work / name
        self.mqtt_port, self.http_port = free_port(), free_port()
        bridge_tpl, edge_tpl = self.root / "bridge-template", self.root / "edge-template"
        bridge = stack.start_bridge(bridge_tpl, self.mqtt_port, self.http_port, name=f"{name}-enroll-bridge")
        try:
            self.device_id = stack.enroll_edge(bridge_tpl, edge_tpl, self.http_port)
        finally:
            bridge.stop()
            stack.procs.remove(bridge)
        self.bridge_tpl, self.edge_tpl = bridge_tpl, edge_tpl

    def fresh(self, run: str, edge_from: Path | None = None, bridge_from: Path | None = None) -> tuple[Path, Path]:
        """(bridge data dir, edge data dir) for one run: copies of the templates (or of the dirs given)."""
        bridge_dir, edge_dir = self.root / run / "bridge", self.root / run / "edge"
        shutil.rmtree(self.root / run, ignore_errors=True)
        shutil.copytree(bridge_from or self.bridge_tpl, bridge_dir)
        shutil.copytree(edge_from or self.edge_tpl, edge_dir)
        # The copies' pages are dirty in the page cache: flushed now, not by the first fsync of the run
        # (with 1,000,000 intents kept, 1 GB written inside the first checkpoint: a 0.3-1.1 s stall in P5).
        os.sync()
        return bridge_dir, edge_dir

    def start_bridge(self, bridge_dir: Path) -> Proc:
        return self.stack.start_bridge(bridge_dir, self.mqtt_port, self.http_port)
