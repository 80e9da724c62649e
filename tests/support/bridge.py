"""A real bridge on loopback TLS with paho-mqtt devices, for the bridge's integration tests.

The fixtures `harness` and `counting` are used by importing them into a test module; `node` starts one of
several bridge nodes on a shared store (with the `pg_url` fixture of tests.support.stores). `until` is
re-exported here for the bridge tests (it lives in tests.support.net).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import paho.mqtt.client as mqtt
import pytest

from cloud_bridge.config import load_config
from cloud_bridge.errors import PermanentError
from cloud_bridge.integrations.base import Integration, Job, Outcome
from cloud_bridge.node import Bridge
from cloud_bridge.settings import BridgeSettings, HostPort
from cloud_bridge.store.url import StoreUrl
from intent_contract import signed
from intent_contract.codec import Ack, Envelope, decode_acks, encode_batch
from intent_contract.device_token import generate_private_key_pem, public_key_pem, sign_device_token
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from tests.support.mqtt_raw import connect_packet
from tests.support.net import free_port, release_paho, until
from tests.support.offline_keys import share_offline_keys

TENANTS: dict[str, Any] = {
    "acme": {
        "policy": {
            "kinds": ["email.send", "http.request"],
            "email_domains": ["example.com"],
            "email_from": "alerts@acme.example",
            "http_credentials": ["crm"],
        }
    }
}


class CountingIntegration:
    """A test-only email.send integration that counts executions (our own code, in-process)."""

    kind = "email.send"
    concurrency = 4

    def __init__(self) -> None:
        self.calls: list[Job] = []

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job)
        if job.payload.get("subject") == "fail":
            raise PermanentError("refused by test", code="test_refused")
        return Outcome("sent")

    async def aclose(self) -> None:
        return None


class HeldIntegration(CountingIntegration):
    """A CountingIntegration whose executions wait until `release` is set (a provider call under way)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job)
        await self.release.wait()
        return Outcome("sent")


def envelope(intent_id: str, kind: str, payload: dict[str, Any], *, app: str = "hvac-ui", attempt: int = 1) -> Envelope:
    """An envelope as the edge would send it, created now."""
    return Envelope(
        id=intent_id,
        app=app,
        kind=kind,
        created=int(time.time() * 1000),
        expires=None,
        attempt=attempt,
        payload=payload,
    )


def email(intent_id: str, *, subject: str = "Alarm", attempt: int = 1) -> Envelope:
    payload = {"to": ["ops@example.com"], "subject": subject, "text": "Boiler 3 hot"}
    return envelope(intent_id, "email.send", payload, attempt=attempt)


async def refused_alone(
    harness: Harness, counting: CountingIntegration, items: list[dict[Any, Any]], refused: list[str], good: list[str]
) -> dict[str, Ack]:
    """Send `items` (wire envelopes) in one batch from a new device: the `refused` ids come back
    rejected/schema_violation, the `good` ones are delivered and the only ones executed. The acks by id."""
    client = await harness.connect(await harness.enroll())
    try:
        client.publish("intents", msgpack.packb({"v": 1, "items": items}, use_bin_type=True))
        for intent_id in good:
            await until(lambda i=intent_id: "delivered" in client.states().get(i, []), what=f"{intent_id} delivered")
        by_id = {a.id: a for a in client.acks}
        assert {(by_id[i].state, by_id[i].code) for i in refused} == {("rejected", "schema_violation")}
        assert sorted(job.intent_id for job in counting.calls) == sorted(good)
        return by_id
    finally:
        await client.stop()


def rotation_document(device_id: str, current: bytes, proposed: bytes, now: float | None = None) -> bytes:
    """What `edge-outbox rotate-key` sends: the proposed key signed by itself, inside the current key's signature."""
    made = int((time.time() if now is None else now) * 1000)
    inner = signed.sign(NewKey(device_id, public_key_pem(proposed), made).encode(), proposed, typ=NEW_KEY_TYPE,
                        kid=device_id)  # fmt: skip
    return signed.sign(inner, current, typ=KEY_ROTATION_TYPE, kid=device_id)


@dataclass
class Creds:
    device_id: str
    private_pem: bytes

    def token(self, *, audience: str = "cloud-bridge", lifetime: int = 600) -> str:
        return sign_device_token(
            self.private_pem, self.device_id, int(time.time()), lifetime_s=lifetime, audience=audience
        )

    def rotated(self) -> tuple[Creds, bytes]:
        """The device with a new key pair, and the rotation document that proposes it."""
        proposed = generate_private_key_pem()
        return Creds(self.device_id, proposed), rotation_document(self.device_id, self.private_pem, proposed)


@dataclass
class Harness:
    bridge: Bridge
    settings: BridgeSettings
    ca_file: Path

    @property
    def mqtt_port(self) -> int:
        return self.settings.listen.port

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.settings.http_listen.port}"

    @property
    def metrics_url(self) -> str:
        assert self.settings.metrics_listen is not None
        return f"http://127.0.0.1:{self.settings.metrics_listen.port}"

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    async def post_enroll(self, code: str, public_key: str, *, source: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
        status, body, _ = await self.enroll_request(code, public_key, source=source)
        return status, body

    async def enroll_request(
        self, code: str, public_key: str, *, source: str = "127.0.0.1"
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """POST /v1/enroll from the loopback address `source` (any of 127.0.0.0/8): status, body, headers."""
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as http,
            http.post(
                f"{self.base_url}/v1/enroll", json={"code": code, "public_key": public_key}, ssl=self.client_ssl()
            ) as response,
        ):
            return response.status, await response.json(), dict(response.headers)

    async def post(self, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
        """POST `data` to the HTTPS API: status and JSON body."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base_url}{path}", data=data, ssl=self.client_ssl()) as response,
        ):
            return response.status, await response.json()

    async def device_status(self, creds: Creds, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """GET /v1/device with `token`, by default a fresh one of `creds`: status and JSON body."""
        headers = {"Authorization": f"Bearer {token if token is not None else creds.token()}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.base_url}/v1/device", headers=headers, ssl=self.client_ssl()) as response,
        ):
            return response.status, await response.json()

    async def enroll(self, tenant: str = "acme", name: str = "boiler-7") -> Creds:
        code = self.bridge.registry.create_code(tenant, name, 3600, time.time())
        private = generate_private_key_pem()
        status, body = await self.post_enroll(code, public_key_pem(private))
        assert status == 201, body
        return Creds(body["device_id"], private)

    async def connack(self, creds: Creds) -> int:
        """The CONNACK return code for `creds`' CONNECT, on the event loop alone: no thread of its default pool
        (paho's connect takes one), for tests of what holds those threads at the bridge."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.mqtt_port, ssl=self.client_ssl(), server_hostname="127.0.0.1"
        )
        try:
            writer.write(connect_packet(creds.device_id, creds.device_id, creds.token()))
            connack = await reader.readexactly(4)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        assert connack[:2] == b"\x20\x02", connack
        return connack[3]

    async def connect(self, creds: Creds, password: str | None = None, **kw: Any) -> DeviceClient:
        client = DeviceClient(self, creds.device_id, password if password is not None else creds.token(), **kw)
        await client.start()
        return client


@dataclass
class DeviceClient:
    """A paho-mqtt device over verified TLS; collects the acks it receives."""

    harness: Harness
    device_id: str
    password: str
    client_id: str | None = None
    username: str | None = None
    subscribe: bool = True
    websocket: bool = False
    acks: list[Ack] = field(default_factory=list)
    connack: Any = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    suback: list[Any] = field(default_factory=list)
    message_sizes: list[int] = field(default_factory=list)
    acks_per_message: list[int] = field(default_factory=list)
    _connected: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id or self.device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            transport="websockets" if self.websocket else "tcp",
        )
        self.mqtt.tls_set(ca_certs=str(self.harness.ca_file))
        self.mqtt.username_pw_set(self.username or self.device_id, self.password)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_message = self._on_message
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.reconnect_delay_set(60, 120)  # never reconnect by itself during a test

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        if not reason.is_failure and self.subscribe:
            client.subscribe(f"devices/{self.device_id}/acks", qos=1)
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.suback.extend(reasons)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            acks = decode_acks(message.payload)
            self.message_sizes.append(len(message.payload))
            self.acks_per_message.append(len(acks))
            self.acks.extend(acks)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.disconnected.set()
        self._connected.set()

    async def start(self) -> None:
        port = self.harness.settings.ws_listen.port if self.websocket and self.harness.settings.ws_listen else None
        await asyncio.to_thread(self.mqtt.connect, "127.0.0.1", port or self.harness.mqtt_port, 30)
        self.mqtt.loop_start()
        await until(self._connected.is_set, what="connack or disconnect")

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and not self.disconnected.is_set()

    def publish(self, leaf: str, data: bytes, device_id: str | None = None) -> None:
        self.mqtt.publish(f"devices/{device_id or self.device_id}/{leaf}", data, qos=1)

    def send(self, envelopes: list[Envelope]) -> None:
        self.publish("intents", encode_batch(envelopes))

    def states(self) -> dict[str, list[str]]:
        with self._lock:
            seen: dict[str, list[str]] = {}
            for ack in self.acks:
                seen.setdefault(ack.id, []).append(str(ack.state))
            return seen

    async def stop(self) -> None:
        self.mqtt.disconnect()
        await asyncio.to_thread(self.mqtt.loop_stop)
        release_paho(self.mqtt)


def listener_port(bridge: Harness, listener: str) -> int:
    """The port of one of a bridge's listeners: `mqtt`, `ws` (it must have one) or `https`."""
    ws = bridge.settings.ws_listen
    assert ws is not None
    return {"mqtt": bridge.mqtt_port, "ws": ws.port, "https": bridge.settings.http_listen.port}[listener]


def make_settings(
    tmp_path: Path,
    files: Mapping[str, Path],
    *,
    tenants: Mapping[str, Any] | None = None,
    integrations: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    store: StoreUrl | None = None,
    node_id: str = "node-a",
    bridge: Mapping[str, Any] | None = None,
    dashboard: Mapping[str, Any] | None = None,
) -> BridgeSettings:
    """Settings for an in-process bridge on free loopback ports; `bridge` keys replace the test defaults."""
    document = {
        "bridge": {"retry_base": 0.05, "retry_cap": 0.2, **(bridge or {})},
        "tenants": dict(TENANTS if tenants is None else tenants),
        "integrations": dict(integrations or {}),
        "dashboard": dict(dashboard or {}),
    }
    if store is not None and store.shared:
        share_offline_keys(tmp_path / "data")  # every node of one store holds the same
    return BridgeSettings(
        data_dir=tmp_path / "data",
        listen=HostPort("127.0.0.1", free_port()),
        http_listen=HostPort("127.0.0.1", free_port()),
        metrics_listen=HostPort("127.0.0.1", free_port()),
        tls_cert=files["cert"],
        tls_key=files["key"],
        config=load_config(document, env or {}),
        revocation_poll=0.2,
        store=store,
        node_id=node_id,
    )


async def running_bridge(
    settings: BridgeSettings, ca_file: Path, integrations: Mapping[str, Integration] | None
) -> AsyncIterator[Harness]:
    bridge = Bridge(settings, integrations=integrations)
    await bridge.start()
    try:
        yield Harness(bridge, settings, ca_file)
    finally:
        await bridge.stop()


@contextlib.asynccontextmanager
async def node(
    tmp_path: Path, files: dict[str, Path], url: StoreUrl, name: str, integration: CountingIntegration
) -> AsyncIterator[Harness]:
    """One bridge node named `name` on the shared store `url`, in its own directory under `tmp_path`."""
    settings = make_settings(tmp_path / name, files, store=url, node_id=name)
    async for harness in running_bridge(settings, files["ca"], {"email.send": integration}):
        yield harness


@contextlib.asynccontextmanager
async def a_admits_b_executes(
    tmp_path: Path, files: dict[str, Path], url: StoreUrl, on_a: CountingIntegration, on_b: CountingIntegration
) -> AsyncIterator[tuple[Harness, Harness, Creds, DeviceClient]]:
    """Nodes A and B on the shared store `url`, and a device enrolled and connected at node A, which admits
    its intents but never executes them (its executor stopped): only node B runs them."""
    async with node(tmp_path, files, url, "node-a", on_a) as a, node(tmp_path, files, url, "node-b", on_b) as b:
        assert a.bridge.executor is not None
        await a.bridge.executor.stop()
        creds = await a.enroll()
        client = await a.connect(creds)
        try:
            yield a, b, creds, client
        finally:
            await client.stop()


@pytest.fixture
def counting() -> CountingIntegration:
    return CountingIntegration()


@pytest.fixture
async def harness(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, server_cert_files)
    async for h in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield h
