"""compose/cloud.yml (PostgreSQL, two bridge nodes, HAProxy): its parts fit together. Docker does not
run here, so what can be checked is: the balancer sends every published port to a port each node
listens on, the nodes share one config whose store is the compose database, and HAProxy accepts the
file. tests/integration/test_compose_cloud.py runs the same HAProxy file in front of real nodes."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_bridge.settings import build_settings
from cloud_bridge.store.url import StoreKind

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "cloud.yml"
HAPROXY = ROOT / "compose" / "config" / "haproxy.cfg"


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def nodes() -> dict[str, list[str]]:
    return {name: s["command"] for name, s in services().items() if s.get("command", [None, None])[1] == "run"}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def haproxy_backends() -> dict[str, list[tuple[str, int]]]:
    """backend name -> [(host, port)] of its servers."""
    backends: dict[str, list[tuple[str, int]]] = {}
    current = None
    for line in HAPROXY.read_text().splitlines():
        words = line.split()
        if words[:1] == ["backend"]:
            current = words[1]
            backends[current] = []
        elif words[:1] == ["server"] and current is not None:
            host, port = words[2].rsplit(":", 1)
            backends[current].append((host, int(port)))
    return backends


def haproxy_frontends() -> dict[int, str]:
    """bound port -> backend."""
    text = HAPROXY.read_text()
    found = {}
    for block in re.split(r"\n(?=frontend )", text)[1:]:
        port = int(re.search(r"bind :(\d+)", block).group(1))  # type: ignore[union-attr]
        found[port] = re.search(r"default_backend (\S+)", block).group(1)  # type: ignore[union-attr]
    return found


def test_two_nodes_with_distinct_ids_and_one_shared_config() -> None:
    found = nodes()
    assert len(found) >= 2
    assert len({flag(argv, "--node-id") for argv in found.values()}) == len(found)
    assert len({flag(argv, "--config") for argv in found.values()}) == 1
    for argv in found.values():
        assert "--data-dir" not in argv  # the image's /data: only the control socket and the offline keys


def test_every_bridge_container_has_the_same_offline_keys() -> None:
    """Each container's /data is a volume of its own, and the offline keys are made on first use in
    /data/offline-keys: each node made its own, and `migrate` (run with --rm for import, receipt and
    enroll-ticket) new ones at every run. A device pinned the keys of the node it enrolled through or of one
    `enroll-ticket` run, so its bundles could not be read by an import and its receipts were refused."""
    bridges = {name: s for name, s in services().items() if s.get("build", {}).get("target") == "bridge"}
    assert set(nodes()) < set(bridges) and "migrate" in bridges
    mounts = {name: {v.split(":")[1]: v for v in s["volumes"]} for name, s in bridges.items()}
    keys = {name: found.get("/data/offline-keys") for name, found in mounts.items()}
    assert len(set(keys.values())) == 1 and None not in keys.values(), keys
    source, _, mode = next(iter(keys.values())).split(":")  # type: ignore[union-attr]
    assert (source, mode) == ("./offline-keys", "ro")
    assert "cloud-bridge offline-keys --data-dir compose" in COMPOSE.read_text()  # how to make them


def test_the_balancer_sends_each_published_port_to_every_node() -> None:
    lb = services()["lb"]
    published = {int(p.split(":")[1]) for p in lb["ports"]}
    frontends = haproxy_frontends()
    assert set(frontends) == published
    backends = haproxy_backends()
    listens = {
        name: {int(flag(argv, f).rsplit(":", 1)[1]) for f in ("--listen", "--http-listen", "--ws-listen")}
        for name, argv in nodes().items()
    }
    for port, backend in frontends.items():
        servers = backends[backend]
        assert {host for host, _ in servers} == set(listens), (port, servers)
        for host, target in servers:
            assert target in listens[host], (backend, host, target)


def test_the_node_config_uses_the_compose_database_and_no_secret() -> None:
    config = ROOT / "compose" / "config" / flag(next(iter(nodes().values())), "--config").rsplit("/", 1)[1]
    env = {"POSTGRES_PASSWORD": "x", "SMTP_PASSWORD": "x", "CRM_TOKEN": "x"}
    settings = build_settings(data_dir=ROOT / "unused", env=env, config_path=config)
    url = settings.store_url
    assert url.kind is StoreKind.POSTGRESQL
    pg = services()["postgres"]["environment"]
    assert url.location == f"postgresql://{pg['POSTGRES_USER']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert "password" not in config.read_text().replace("password_env", "")
    migrate = services()["migrate"]["command"]
    assert migrate[1:3] == ["db", "upgrade"]
    assert flag(migrate, "--config") == flag(next(iter(nodes().values())), "--config")


def test_haproxy_accepts_the_file() -> None:
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY)], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_the_nodes_read_the_proxy_header_from_the_balancer_only() -> None:
    """HAProxy sends a PROXY header on every connection to a node, checks included, and the nodes trust the
    balancer's fixed address for it, outside the range other containers get theirs from."""
    lb = services()["lb"]["networks"]["default"]["ipv4_address"]
    config = ROOT / "compose" / "config" / flag(next(iter(nodes().values())), "--config").rsplit("/", 1)[1]
    env = {"POSTGRES_PASSWORD": "x", "SMTP_PASSWORD": "x", "CRM_TOKEN": "x"}
    settings = build_settings(data_dir=ROOT / "unused", env=env, config_path=config)
    assert [str(n) for n in settings.connection_limits.proxies] == [f"{lb}/32"]
    network = yaml.safe_load(COMPOSE.read_text())["networks"]["default"]["ipam"]["config"][0]
    assert ipaddress.ip_address(lb) in ipaddress.ip_network(network["subnet"])
    assert ipaddress.ip_address(lb) not in ipaddress.ip_network(network["ip_range"])
    default_server = next(line.split() for line in HAPROXY.read_text().splitlines() if "default-server" in line)
    assert {"send-proxy-v2", "check-send-proxy"} <= set(default_server)
