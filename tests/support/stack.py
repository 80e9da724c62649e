"""End-to-end harness: a real `cloud-bridge run`, real `edge-outbox run`, an SMTP sink and a TCP proxy.

Everything listens on free 127.0.0.1 ports (never 1883). The bridge and the edge are subprocesses,
so SIGKILL hits them exactly as it would in the field; the sink and the proxy run in this process on
their own threads. `Stack` owns every process and stops them all in `close()`, even after a failure.

Executions are counted at the sink by intent id (each test puts the id in the subject) and by
Message-ID (derived by the bridge from device:intent:attempt, the idempotency key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.edge import Client, OutboxProcess, stored_ids
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.offline_keys import share_offline_keys

APP = "e2e"
TENANT = "e2e"
INTENT_TOPIC = f"outbox/{APP}/email.send"
STATUS_TOPIC = f"outbox/{APP}/status/#"
SMTP_CONCURRENCY = 16
FINAL_EDGE_STATES = {"delivered", "failed", "expired", "rejected", "cancelled"}


def bridge_cli() -> list[str]:
    return [sys.executable, "-m", "cloud_bridge.cli"]


def intent(intent_id: str) -> dict[str, Any]:
    """An email.send intent whose subject names its id, so the sink can count executions per intent."""
    return {"id": intent_id, "to": "ops@example.com", "subject": f"e2e {intent_id}", "text": "Boiler 3 hot"}


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{n:05d}" for n in range(count)]


class SmtpSink:
    """The email provider: an aiosmtpd server that records every DATA it accepts (no deduplication)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_subject: Counter[str] = Counter()
        self._message_ids: dict[str, set[str]] = {}
        self._parser = BytesHeaderParser()
        # intent id -> the reply given instead of 250 (e.g. "550 5.7.1 refused"): such a DATA is not counted.
        self.answers: dict[str, str] = {}
        self.refused: Counter[str] = Counter()
        self.delay_s = 0.0  # how long each DATA takes, as a provider's does (each connection waits on its own)
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        headers = self._parser.parsebytes(envelope.content)
        intent_id = str(headers["Subject"]).removeprefix("e2e ")
        with self._lock:
            answer = self.answers.get(intent_id)
            if answer is not None:
                self.refused[intent_id] += 1
                return answer
            self._by_subject[intent_id] += 1
            self._message_ids.setdefault(intent_id, set()).add(str(headers["Message-ID"]))
        return "250 OK"

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def executions(self) -> Counter[str]:
        """intent id -> how many times the sink received it."""
        with self._lock:
            return Counter(self._by_subject)

    def answer(self, intent_id: str, reply: str | None) -> None:
        """Reply `reply` to DATA of this intent from now on (None: accept it again)."""
        with self._lock:
            if reply is None:
                self.answers.pop(intent_id, None)
            else:
                self.answers[intent_id] = reply

    def refusals(self, intent_id: str) -> int:
        with self._lock:
            return self.refused[intent_id]

    def total(self) -> int:
        with self._lock:
            return sum(self._by_subject.values())

    def distinct(self) -> int:
        with self._lock:
            return len(self._by_subject)

    def message_ids(self) -> dict[str, set[str]]:
        with self._lock:
            return {k: set(v) for k, v in self._message_ids.items()}


class BridgeProcess:
    """`cloud-bridge run` as a child process; keeps its ports and data across restarts."""

    def __init__(
        self,
        work: Path,
        certs: dict[str, Path],
        smtp_port: int = 0,
        *,
        config_text: str | None = None,
        store_args: tuple[str, ...] = (),
        run_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        name: str = "bridge",
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.work = work
        self.nofile = nofile  # the process's RLIMIT_NOFILE (soft, hard); None: this process's
        self.certs = certs
        self.data_dir = work / name
        if any("postgresql" in text for text in (*store_args, config_text or "")):
            share_offline_keys(self.data_dir)  # every node of one store holds the same
        self.mqtt_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.config = work / f"{name}.toml"
        self.config.write_text(
            config_text
            or "[bridge]\nretry_base = 0.1\nretry_cap = 1.0\n\n"
            f'[integrations.smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n'
            f"concurrency = {SMTP_CONCURRENCY}\ntimeout = 10\n\n"
            f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n'
            'email_from = "alerts@e2e.example"\n'
        )
        self.store_args = store_args  # e.g. ("--store", "postgresql://...") for every command
        self.run_args = run_args
        self.env = env
        self.log_path = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def start(self) -> BridgeProcess:
        args = [
            *bridge_cli(),
            "run",
            "--data-dir",
            str(self.data_dir),
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{self.mqtt_port}",
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--tls-cert",
            str(self.certs["cert"]),
            "--tls-key",
            str(self.certs["key"]),
            *self.store_args,
            *self.run_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {self.starts} ---\n".encode())
            if self.nofile is not None:  # util-linux's prlimit sets it, then runs the bridge
                args = ["prlimit", f"--nofile={self.nofile[0]}:{self.nofile[1]}", "--", *args]
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1
        wait_for_port(self.http_port, timeout=30)
        wait_for_port(self.mqtt_port, timeout=30)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [*bridge_cli(), *args, "--data-dir", str(self.data_dir), *self.store_args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"cloud-bridge {' '.join(args)}: {result.stderr}"
        return result.stdout

    def enroll(self, edge_dir: Path, name: str = "edge-1", prefix: tuple[str, ...] = (), tenant: str = TENANT) -> str:
        """Enroll an edge data dir with a fresh one-time code (under `prefix`, e.g. faketime); returns the device id."""
        code = json.loads(self.cli("devices", "enroll-code", "--tenant", tenant, "--name", name, "--json"))["code"]
        result = subprocess.run(
            [
                *prefix,
                sys.executable,
                "-m",
                "edge_outbox",
                "enroll",
                "--data-dir",
                str(edge_dir),
                "--bridge",
                self.url,
                "--code",
                code,
                "--ca",
                str(self.certs["ca"]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        # No outbox runs on this data dir yet: the next step is to start one, not to restart it.
        assert "start `edge-outbox run`" in result.stdout and "restart" not in result.stdout, result.stdout
        device = json.loads((edge_dir / "identity" / "device.json").read_text())
        return str(device["device_id"])

    def audit(self, device_id: str) -> list[dict[str, Any]]:
        """The device's audit records, read with the bridge's own CLI as an operator would."""
        records: list[dict[str, Any]] = json.loads(
            self.cli("audit", "--device", device_id, "--limit", "100000", "--json")
        )
        return records

    def audit_events(self, device_id: str) -> Counter[str]:
        """Audit event counts for one device."""
        return Counter(r["event"] for r in self.audit(device_id))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def point_edge_at(edge_dir: Path, mqtt_port: int) -> None:
    """Make the enrolled edge reach the bridge's MQTT listener on another port (a proxy in front of it)."""
    path = edge_dir / "identity" / "device.json"
    device = json.loads(path.read_text())
    device["mqtt_port"] = mqtt_port
    path.write_text(json.dumps(device, indent=2) + "\n")


class _Link:
    """One proxied connection: its two writers and how its return path is treated."""

    def __init__(self, edge_w: asyncio.StreamWriter, bridge_w: asyncio.StreamWriter, hold_after: int | None) -> None:
        self.edge_w, self.bridge_w = edge_w, bridge_w
        self.hold_after = hold_after
        self.up_bytes = 0
        self.holding = False

    def abort(self) -> None:
        self.edge_w.transport.abort()
        self.bridge_w.transport.abort()


class CutProxy:
    """A TCP proxy (edge -> bridge MQTT port) on its own event loop thread, for faults on a live link.

    `reopen(hold_after=n)`: new connections pass everything until n bytes went from the edge to the
    bridge; from then on bytes from the bridge to the edge are held back (kept from the edge) while
    the edge's bytes still flow. `cut()`: every connection is aborted, held bytes are discarded, and
    new connections are refused until `reopen()`. `source`: the loopback address the proxy connects
    to the bridge from (any of 127.0.0.0/8), so the bridge sees the edge at another address.
    """

    def __init__(self, target_port: int, *, source: str = "127.0.0.1", port: int | None = None) -> None:
        self.port = port or free_port()  # `port`: one the edge was told of while nothing listened there
        self._target = target_port
        self._source = source
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cut-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._open = True
        self._hold_after: int | None = None
        self.held_bytes = 0
        self.connections = 0

    def start(self) -> CutProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, edge_r: asyncio.StreamReader, edge_w: asyncio.StreamWriter) -> None:
        if not self._open:
            edge_w.transport.abort()
            return
        try:
            bridge_r, bridge_w = await asyncio.open_connection("127.0.0.1", self._target, local_addr=(self._source, 0))
        except OSError:
            edge_w.transport.abort()
            return
        self.connections += 1
        link = _Link(edge_w, bridge_w, self._hold_after)
        self._links.add(link)
        try:
            await asyncio.gather(self._up(link, edge_r), self._down(link, bridge_r))
        finally:
            self._links.discard(link)
            link.abort()

    async def _up(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                link.up_bytes += len(data)
                if link.hold_after is not None and link.up_bytes >= link.hold_after:
                    link.holding = True
                link.bridge_w.write(data)
                await link.bridge_w.drain()
        link.abort()

    async def _down(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if link.holding:
                    self.held_bytes += len(data)  # never forwarded: cut() throws it away with the link
                    continue
                link.edge_w.write(data)
                await link.edge_w.drain()
        link.abort()

    def cut(self) -> None:
        async def cut() -> None:
            self._open = False
            for link in list(self._links):
                link.abort()

        self._call(cut())

    def reopen(self, *, hold_after: int | None = None) -> None:
        async def reopen() -> None:
            self._hold_after = hold_after
            self._open = True

        self._call(reopen())

    def close(self) -> None:
        async def close() -> None:
            for link in list(self._links):
                link.abort()
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Stack:
    """One bridge, one edge (enrolled), one SMTP sink and the publishing app; `close()` ends them all.

    `store_args` go to every bridge command, e.g. ("--store", "postgresql://...")."""

    def __init__(self, work: Path, certs: dict[str, Path], *, store_args: tuple[str, ...] = ()) -> None:
        self.work = work
        self.sink = SmtpSink().start()
        self.bridge = BridgeProcess(work, certs, self.sink.port, store_args=store_args)
        self.edge_dir = work / "edge"
        self.edge_port = free_port()
        self.edge: OutboxProcess | None = None
        self.apps: list[Client] = []
        self.proxy: CutProxy | None = None
        self.device_id = ""

    def enroll(self) -> str:
        self.device_id = self.bridge.enroll(self.edge_dir)
        return self.device_id

    def start_edge(self, *extra: str, prefix: tuple[str, ...] = ()) -> OutboxProcess:
        self.edge = OutboxProcess(self.edge_dir, self.edge_port, *extra, prefix=prefix).start()
        return self.edge

    def app(self, client_id: str = "e2e-app", *, subscribe: bool = True) -> Client:
        """A publishing app connected to the edge (optionally listening to its statuses)."""
        client = Client(self.edge_port, client_id, inflight=200).connect()
        if subscribe:
            client.subscribe(STATUS_TOPIC)
        self.apps.append(client)
        return client

    def publish_all(self, app: Client, intent_ids: list[str], timeout: float = 120.0) -> set[str]:
        """Publish every intent QoS 1 and wait for all PUBACKs; returns the acked ids."""
        for intent_id in intent_ids:
            app.publish(INTENT_TOPIC, intent(intent_id), name=intent_id)
        wanted = set(intent_ids)
        wait_until(lambda: wanted <= app.acked, timeout, interval=0.2, what=f"PUBACK of {len(wanted)} intents")
        return app.acked & wanted

    def edge_states(self) -> dict[str, str]:
        """id -> state in the edge's database (read directly, as a test oracle)."""
        return stored_ids(self.edge_dir)

    def wait_delivered(self, intent_ids: list[str], timeout: float, what: str = "delivery") -> None:
        """Until every intent is executed at the sink and the edge holds a final state for it."""
        wanted = set(intent_ids)

        def done() -> bool:
            if not wanted <= self.sink.executions().keys():
                return False
            states = self.edge_states()
            return all(states.get(i) in FINAL_EDGE_STATES for i in wanted)

        wait_until(done, timeout, interval=0.5, what=what)

    def diagnostics(self) -> str:
        states = Counter(self.edge_states().values())
        parts = [
            f"sink: {self.sink.total()} executions of {self.sink.distinct()} intents; edge states: {dict(states)}",
            f"--- bridge log ---\n{self.bridge.log()[-6000:]}",
        ]
        if self.edge is not None:
            parts.append(f"--- edge log ---\n{self.edge.log()[-6000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for client in self.apps:
            with contextlib.suppress(Exception):
                client.close()
        if self.edge is not None and self.edge.proc is not None:
            self.edge.__exit__()
        self.bridge.close()
        if self.proxy is not None:
            self.proxy.close()
        self.sink.stop()


@contextlib.contextmanager
def running_stack(work: Path, certs: dict[str, Path], *, store_args: tuple[str, ...] = ()) -> Iterator[Stack]:
    """A Stack with its bridge started and its edge data dir enrolled (the edge not started); always closed."""
    stack = Stack(work, certs, store_args=store_args)
    try:
        stack.bridge.start()
        stack.enroll()
        yield stack
    finally:
        stack.close()


def assert_exactly_once(acked: set[str], sink: SmtpSink, edge_states: dict[str, str]) -> None:
    """0 lost (every PUBACKed intent executed and delivered at the edge), 0 executed twice."""
    executions = sink.executions()
    lost = sorted(acked - executions.keys())
    twice = sorted(i for i, n in executions.items() if n > 1)
    unknown = sorted(executions.keys() - acked)
    assert not lost, f"{len(lost)} acked intents never executed, e.g. {lost[:5]}"
    assert not twice, f"{len(twice)} intents executed more than once, e.g. {[(i, executions[i]) for i in twice[:5]]}"
    assert not unknown, f"the sink received intents nobody published: {unknown[:5]}"
    not_delivered = sorted(i for i in acked if edge_states.get(i) != "delivered")
    assert not not_delivered, f"{len(not_delivered)} intents not delivered at the edge, e.g. {not_delivered[:5]}"
