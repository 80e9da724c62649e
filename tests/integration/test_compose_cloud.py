"""compose/cloud.yml's topology, run without Docker: compose/config/haproxy.cfg (its addresses made
loopback) in front of two real `cloud-bridge run` nodes with compose/config/bridge-pg.toml on a test
database. A device enrolls and connects through the balancer; the node holding it is SIGKILLed; it
reconnects through the balancer to the other node, which knows its intents.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.bridge import Creds, DeviceClient, email, until
from tests.support.haproxy import haproxy_binary
from tests.support.net import free_port, wait_for_port
from tests.support.stack import BridgeProcess
from tests.support.stores import pg_database

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "compose" / "config"
COMPOSE_PORTS = {8883: "mqtt_port", 8443: "http_port", 9443: "ws_port"}
BALANCER = "127.0.0.9"  # the balancer's loopback stand-in: it connects to the nodes from here


def loopback_config(nodes: dict[str, BridgeProcess], front: dict[int, int]) -> str:
    """The compose HAProxy file with each address replaced by its loopback stand-in, and a maxconn this
    host's file limit allows (a container gets its own limit)."""
    text = (CONFIG / "haproxy.cfg").read_text()
    text = re.sub(r"maxconn \d+", "maxconn 1000", text)
    text = re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", text).replace(" resolvers docker", "")
    text = re.sub(r"bind :(\d+)", lambda m: f"bind 127.0.0.1:{front[int(m.group(1))]}", text)
    text = re.sub(r"(\n *default-server) ", rf"\1 source {BALANCER} ", text)

    def server(match: re.Match[str]) -> str:
        node = nodes[match.group(1)]
        port = getattr(node, COMPOSE_PORTS[int(match.group(2))])
        return f"server {match.group(1)} 127.0.0.1:{port} port {node.http_port}"

    return re.sub(r"server (\S+) \S+?:(\d+)", server, text)


def loopback_node_config() -> str:
    """compose/config/bridge-pg.toml reading the PROXY header from the balancer's loopback stand-in."""
    text = (CONFIG / "bridge-pg.toml").read_text()
    replaced = re.sub(r"proxy_protocol_from = \[.*\]", f'proxy_protocol_from = ["{BALANCER}"]', text)
    assert replaced != text, "bridge-pg.toml names no balancer in proxy_protocol_from"
    return replaced


@pytest.fixture
def topology(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[dict[str, Any]]:
    haproxy = haproxy_binary()
    with pg_database() as url:
        env = {**os.environ, "POSTGRES_PASSWORD": "unused-with-trust", "SMTP_PASSWORD": "x", "CRM_TOKEN": "x"}
        nodes = {}
        for name in ("bridge-1", "bridge-2"):
            ws_port = free_port()
            node = BridgeProcess(
                tmp_path,
                server_cert_files,
                config_text=loopback_node_config(),
                store_args=("--store", str(url)),
                run_args=("--node-id", name, "--ws-listen", f"127.0.0.1:{ws_port}"),
                env=env,
                name=name,
            )
            node.ws_port = ws_port  # type: ignore[attr-defined]
            nodes[name] = node
        front = {port: free_port() for port in COMPOSE_PORTS}
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(loopback_config(nodes, front))
        lb: subprocess.Popen[bytes] | None = None
        try:
            for node in nodes.values():
                node.start()
            with (tmp_path / "haproxy.log").open("wb") as log:
                lb = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
            for port in front.values():
                wait_for_port(port)
            yield {"nodes": nodes, "front": front, "url": url, "ca": server_cert_files["ca"]}
        finally:
            if lb is not None:
                lb.send_signal(signal.SIGTERM)
                lb.wait(10)
            for node in nodes.values():
                node.close()


def connected_here(node: BridgeProcess) -> float:
    """bridge_connected_devices of one node, read from its own /metrics (not through the balancer)."""
    response = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics")
    match = re.search(r"^bridge_connected_devices (\S+)$", response.text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_compose_cloud_topology_survives_a_node(topology: dict[str, Any]) -> None:
    nodes: dict[str, BridgeProcess] = topology["nodes"]
    front: dict[int, int] = topology["front"]
    ca: Path = topology["ca"]
    context = ssl.create_default_context(cafile=ca)
    lb_https = f"https://127.0.0.1:{front[8443]}"

    assert httpx.get(f"{lb_https}/healthz", verify=context).json() == {"status": "ok", "problems": []}
    code = nodes["bridge-1"].cli("devices", "enroll-code", "--tenant", "acme", "--name", "boiler-7")
    private = generate_private_key_pem()
    enrolled = httpx.post(
        f"{lb_https}/v1/enroll", json={"code": code.strip(), "public_key": public_key_pem(private)}, verify=context
    )
    assert enrolled.status_code == 201, enrolled.text
    creds = Creds(enrolled.json()["device_id"], private)
    via_lb = SimpleNamespace(ca_file=ca, mqtt_port=front[8883], settings=SimpleNamespace(ws_listen=None))

    first = DeviceClient(via_lb, creds.device_id, creds.token())  # type: ignore[arg-type]
    await first.start()
    assert first.accepted
    first.send([email("c-1")])
    await until(lambda: "c-1" in first.states(), what="c-1 accepted through the balancer")
    assert first.states()["c-1"][0] == "accepted"

    holder = max(nodes.values(), key=connected_here)
    assert connected_here(holder) == 1.0
    holder.kill()
    await until(first.disconnected.is_set, what="the device notices its node died")
    await first.stop()

    second = DeviceClient(via_lb, creds.device_id, creds.token())  # type: ignore[arg-type]
    await asyncio.wait_for(second.start(), 30)
    try:
        assert second.accepted, "the balancer did not send the device to the surviving node"
        survivor = next(n for n in nodes.values() if n is not holder)
        assert connected_here(survivor) == 1.0
        second.send([email("c-1"), email("c-2")])  # c-1 again: the shared ledger knows it
        await until(lambda: {"c-1", "c-2"} <= second.states().keys(), what="acks from the surviving node")
        assert second.states()["c-1"][0] == "accepted"
        assert second.states()["c-2"][0] == "accepted"
        audit = survivor.cli("audit", "--device", creds.device_id, "--json")
        assert audit.count('"event": "accept"') == 2  # c-1 admitted once, c-2 once
    finally:
        await second.stop()
