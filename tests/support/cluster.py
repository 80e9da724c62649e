"""Several `cloud-bridge run` nodes on one PostgreSQL database behind a TCP load balancer, edges on it,
and an HTTP provider that honours idempotency keys and counts executions per intent id.

The sink and the balancer run in this process, each on its own event loop thread; the nodes and edges
are subprocesses, so SIGKILL hits them as it would in the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from cloud_bridge.store.url import StoreUrl
from tests.support.edge import Client, OutboxProcess, stored_ids
from tests.support.net import free_port, wait_for_port
from tests.support.stack import BridgeProcess, point_edge_at
from tests.support.stores import pg_database

TENANT = "fleet"
APP = "fleet"
SINK_TOKEN_ENV = "FLEET_SINK_TOKEN"
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


class _Server:
    """A TCP server on 127.0.0.1:`port` with its own asyncio loop on a daemon thread."""

    def __init__(self, name: str, port: int, handler: Handler) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._port, self._handler = port, handler
        self._server: asyncio.Server | None = None

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def start(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handler, "127.0.0.1", self._port, backlog=1024)

        self._call(start())

    def close(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class IdempotentSink:
    """An HTTP/1.1 provider that, like Stripe, executes a request once per Idempotency-Key and answers
    a repeated key without executing again. Keys are `device:intent:attempt` (Job.idempotency_key)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._keys: Counter[str] = Counter()
        self._executions: Counter[str] = Counter()
        self._server = _Server("idempotent-sink", self.port, self._handle)

    def start(self) -> IdempotentSink:
        self._server.start()
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip().decode()
                length = int(headers.get(b"content-length", "0"))
                if length:
                    await reader.readexactly(length)
                key = headers.get(b"idempotency-key", "")
                with self._lock:
                    self._keys[key] += 1
                    if self._keys[key] == 1:
                        self._executions[key.split(":")[1] if key.count(":") == 2 else key] += 1
                writer.write(_RESPONSE)
        writer.close()

    def executions(self) -> Counter[str]:
        """intent id -> executions (a repeated idempotency key is not executed again)."""
        with self._lock:
            return Counter(self._executions)

    def repeated_keys(self) -> dict[str, int]:
        """Idempotency keys the sink saw more than once, and how often."""
        with self._lock:
            return {k: n for k, n in self._keys.items() if n > 1}

    def total(self) -> int:
        with self._lock:
            return sum(self._executions.values())

    def close(self) -> None:
        self._server.close()


class Balancer:
    """A round-robin TCP load balancer (as HAProxy in `mode tcp`): each new connection goes to the next
    backend that accepts it; a dead backend is skipped. Records which backend each live connection has."""

    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        self.backends = list(backends)
        self._next = 0
        self._live: Counter[int] = Counter()
        self.accepted: Counter[int] = Counter()
        self._server = _Server("balancer", self.port, self._accept)

    def start(self) -> Balancer:
        self._server.start()
        return self

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for _ in self.backends:
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                backend_r, backend_w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            break
        else:
            client_w.transport.abort()
            return
        self._live[port] += 1
        self.accepted[port] += 1
        try:
            await asyncio.gather(_pipe(client_r, backend_w), _pipe(backend_r, client_w))
        finally:
            self._live[port] -= 1
            client_w.transport.abort()
            backend_w.transport.abort()

    def live(self) -> dict[int, int]:
        """backend port -> connections open through it now."""
        return {port: n for port, n in self._live.items() if n > 0}

    def close(self) -> None:
        self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def node_config(sink_port: int, *, lease: str = "5s", concurrency: int = 16) -> str:
    """A bridge config: http.request to the sink, the fleet tenant's policy, short retries and leases."""
    return (
        f'[bridge]\nretry_base = 0.1\nretry_cap = 1.0\nlease = "{lease}"\n\n'
        f'[integrations.http]\nconcurrency = {concurrency}\nallow_private_hosts = ["127.0.0.1"]\ntimeout = 10\n'
        "[integrations.http.credentials.sink]\n"
        f'base_urls = ["http://127.0.0.1:{sink_port}/"]\nmethods = ["POST"]\nauth = "bearer"\n'
        f'token_env = "{SINK_TOKEN_ENV}"\n\n'
        f'[tenants.{TENANT}.policy]\nkinds = ["http.request"]\nhttp_credentials = ["sink"]\n'
    )


def intent(intent_id: str) -> dict[str, Any]:
    """An http.request intent to the sink."""
    return {"id": intent_id, "credential": "sink", "method": "POST", "path": "/hook", "json": {"id": intent_id}}


class Cluster:
    """`nodes` bridge nodes on `url`, a balancer in front of their MQTT ports, the sink, and edges."""

    def __init__(self, work: Path, certs: dict[str, Path], url: StoreUrl, nodes: int) -> None:
        self.work = work
        self.sink = IdempotentSink().start()
        env = {**os.environ, SINK_TOKEN_ENV: "fleet-dummy-token"}
        config = node_config(self.sink.port)
        self.nodes = [
            BridgeProcess(
                work,
                certs,
                config_text=config,
                store_args=("--store", str(url)),
                run_args=("--node-id", f"node-{n}"),
                env=env,
                name=f"node-{n}",
            )
            for n in range(nodes)
        ]
        self.balancer = Balancer([n.mqtt_port for n in self.nodes])
        self.edges: list[OutboxProcess] = []
        self.devices: list[str] = []
        self.apps: list[Client] = []

    def start(self) -> Cluster:
        for node in self.nodes:  # one after the other: the first applies the schema
            node.start()
        self.balancer.start()
        return self

    def add_edges(self, count: int) -> None:
        """Enroll `count` edges, each through another node's HTTPS endpoint, all reaching the balancer."""
        for n in range(count):
            edge_dir = self.work / f"edge-{n}"
            self.devices.append(self.nodes[n % len(self.nodes)].enroll(edge_dir, f"edge-{n}", tenant=TENANT))
            point_edge_at(edge_dir, self.balancer.port)
            self.edges.append(OutboxProcess(edge_dir, free_port()).start(wait=False))
        for edge in self.edges:
            wait_for_port(edge.port)

    def app(self, edge: int) -> Client:
        client = Client(self.edges[edge].port, f"app-{edge}", inflight=200).connect()
        self.apps.append(client)
        return client

    def edge_states(self) -> dict[str, str]:
        """intent id -> state, over every edge (ids are unique across edges in these tests)."""
        states: dict[str, str] = {}
        for edge in self.edges:
            states.update(stored_ids(edge.data_dir))
        return states

    def diagnostics(self) -> str:
        states = Counter(self.edge_states().values())
        parts = [f"sink: {self.sink.total()} executions; edge states: {dict(states)}; live {self.balancer.live()}"]
        parts += [f"--- {n.log_path.name} ---\n{n.log()[-3000:]}" for n in self.nodes]
        parts += [f"--- edge {e.port} ---\n{e.log()[-1500:]}" for e in self.edges[:3]]
        return "\n".join(parts)

    def close(self) -> None:
        for client in self.apps:
            with contextlib.suppress(Exception):
                client.close()
        for edge in self.edges:
            if edge.proc is not None and edge.proc.poll() is None:
                edge.proc.kill()
                edge.proc.wait(10)
        for node in self.nodes:
            node.close()
        self.balancer.close()
        self.sink.close()


TOPIC = f"outbox/{APP}/http.request"


@contextlib.contextmanager
def pg_cluster(tmp_path: Path, server_cert_files: dict[str, Path], nodes: int) -> Iterator[Cluster]:
    """`nodes` bridge nodes started on a PostgreSQL database of their own (dropped after), behind the balancer."""
    with pg_database() as url:
        cluster = Cluster(tmp_path, server_cert_files, url, nodes)
        try:
            yield cluster.start()
        finally:
            cluster.close()
