"""Behind a balancer whose MQTT port is not the nodes' own, enrollment tells devices the balancer's port.

Before: `POST /v1/enroll` answered the node's `--listen` port, and every device enrolled through a balancer
that listens on another port (an NLB on 8883 in front of nodes on 18883; two nodes on one host) connected
to the node's port on the balancer's host: refused, or, where it reached a node, past the balancer and
without the PROXY header that node asks of that address. `[bridge] public_mqtt_port` names the port
devices reach (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_outbox.enroll_client import enroll
from intent_contract import mqtt_packets as p
from tests.support.bridge import CountingIntegration, Creds, Harness, counting, make_settings, running_bridge
from tests.support.haproxy import running_haproxy, tcp_balancer
from tests.support.mqtt_raw import connect_packet
from tests.support.net import free_port, wait_until
from tests.support.stack import BridgeProcess

__all__ = ["counting"]  # fixture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fronts() -> dict[str, int]:
    """The balancer's ports, chosen before the node starts: its config names the MQTT one."""
    return {"mqtt": free_port(), "https": free_port()}


@pytest.fixture
async def bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration, fronts: dict[str, int]
) -> AsyncIterator[Harness]:
    config = {"proxy_protocol_from": ["127.0.0.1"], "public_mqtt_port": fronts["mqtt"]}
    settings = make_settings(tmp_path, server_cert_files, bridge=config)
    async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield harness


async def test_a_device_enrolled_through_the_balancer_connects_through_it(
    bridge: Harness, fronts: dict[str, int], tmp_path: Path
) -> None:
    servers = {
        fronts["mqtt"]: (bridge.settings.listen.port, "send-proxy-v2"),
        fronts["https"]: (bridge.settings.http_listen.port, "send-proxy-v2"),
    }
    code = bridge.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    with running_haproxy(tcp_balancer(servers), tmp_path, list(fronts.values())):
        url = f"https://127.0.0.1:{fronts['https']}"
        identity = await asyncio.to_thread(enroll, tmp_path / "edge", url, code, bridge.ca_file)
        written = json.loads((tmp_path / "edge" / "identity" / "device.json").read_text())
        assert (identity.mqtt_port, written["mqtt_port"]) == (fronts["mqtt"], fronts["mqtt"])
        creds = Creds(identity.device_id, (tmp_path / "edge" / "identity" / "device.key").read_bytes())
        assert await _connack(identity.mqtt_port, creds, bridge.client_ssl()) == p.encode(
            p.Connack(False, p.ConnackCode.ACCEPTED)
        )


async def _connack(port: int, creds: Creds, context: ssl.SSLContext) -> bytes:
    """The CONNACK of a CONNECT sent where the device was told to connect."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    try:
        writer.write(connect_packet(creds.device_id, creds.device_id, creds.token()))
        return await reader.readexactly(4)
    finally:
        writer.close()


def test_the_start_line_names_every_listener_and_the_port_devices_are_told(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """`cloud-bridge listening: mqtts ..., https ...` left out the WebSocket listener given with --ws-listen."""
    ws, told = free_port(), free_port()
    config = f'[bridge]\npublic_mqtt_port = {told}\n[tenants.acme.policy]\nkinds = ["email.send"]\n'
    node = BridgeProcess(tmp_path, server_cert_files, smtp_port=free_port(), config_text=config,
                         run_args=("--ws-listen", f"127.0.0.1:{ws}"))  # fmt: skip
    try:
        node.start()
        wait_until(lambda: "cloud-bridge listening:" in node.log(), what="the start's line")
    finally:
        node.stop()
        node.close()
    line = next(x for x in node.log().splitlines() if x.startswith("cloud-bridge listening:"))
    assert line == (
        f"cloud-bridge listening: mqtt 127.0.0.1:{node.mqtt_port} (devices told port {told}), websocket 127.0.0.1:{ws},"
        f" https 127.0.0.1:{node.http_port}, metrics 127.0.0.1:{node.metrics_port}"
    )
