"""Fleet health from the operator's side: `cloud-bridge devices ls/show/diagnose` run as processes, and
connects a device never made (forged tokens), for the fleet tests."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from intent_contract.device_token import generate_private_key_pem, sign_device_token
from intent_contract.device_wire import ErrorLine, HealthReport, LinkStats
from intent_contract.mqtt_packets import ConnackCode
from tests.support.mqtt_raw import connect_packet, read_until_closed, tls_connect
from tests.support.stack import BridgeProcess, bridge_cli

STATES = ("accepted", "forwarded", "delivered", "failed", "expired", "cancelled", "rejected")


def sample_report(**changes: Any) -> HealthReport:
    """A plausible health report; `changes` replace fields."""
    base = HealthReport(
        at=1_800_000_000_000,
        software="0.1.0",
        counts=dict.fromkeys(STATES, 3),
        sizes=dict.fromkeys(STATES, 300),
        pending=6,
        pending_bytes=600,
        oldest_pending_age_ms=90_000,
        max_items=1_000_000,
        max_bytes=1 << 30,
        db_bytes=123_456,
        free_bytes=9 << 30,
        held=0,
        held_for_ms=None,
        held_reason="",
        link=LinkStats("connected", 5_000, 40, 38, 1.5, 2, 1),
        last_error=ErrorLine(60_000, "bridge_unreachable", "bridge unreachable: [Errno 111] Connection refused"),
        clock_offset_ms=-7_200_000,
        clock_source="GET /v1/device",
    )
    return dataclasses.replace(base, **changes)


def bridge_command(bridge: BridgeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """A `cloud-bridge` command on the bridge's store, whatever its exit code."""
    return subprocess.run(
        [*bridge_cli(), *args, "--data-dir", str(bridge.data_dir), *bridge.store_args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(bridge: BridgeProcess, *args: str) -> dict[str, dict[str, Any]]:
    """`devices ls --json` (with `args`), by device id."""
    listing: list[dict[str, Any]] = json.loads(bridge.cli("devices", "ls", "--json", *args))
    return {row["device_id"]: row for row in listing}


def row(bridge: BridgeProcess, device_id: str, *args: str) -> dict[str, Any] | None:
    return rows(bridge, *args).get(device_id)


def shown(bridge: BridgeProcess, device_id: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(bridge.cli("devices", "show", device_id, "--json"))
    return found


def diagnose(bridge: BridgeProcess, device_id: str, *args: str) -> tuple[int, dict[str, Any]]:
    """`devices diagnose --json`: (exit code, answer)."""
    result = bridge_command(bridge, "devices", "diagnose", device_id, "--json", *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def metrics(bridge: BridgeProcess) -> str:
    """The bridge's /metrics page, from its metrics listener (plain HTTP on loopback)."""
    return httpx.get(f"http://127.0.0.1:{bridge.metrics_port}/metrics", timeout=10).text


def forged_connect(mqtt_port: int, ca: Path, device_id: str) -> int:
    """CONNECT as `device_id` with a token signed by a key that is not the device's; the CONNACK code."""
    token = sign_device_token(generate_private_key_pem(), device_id, int(time.time()), lifetime_s=600)
    sock = tls_connect(mqtt_port, str(ca))
    try:
        sock.sendall(connect_packet(device_id, device_id, token))
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert answer[:1] == b"\x20", answer  # a CONNACK, then the bridge closes the connection
    return answer[3]


REFUSED = int(ConnackCode.NOT_AUTHORIZED)
