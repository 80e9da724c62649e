"""A running `cloud-bridge run --log-format json`, fed what strangers send (a client id with a newline, an ESC and
bytes that are not UTF-8): every line is one JSON object, and every field it carries is one the docs list for log
shippers (docs/operations.md, Logs)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from tests.support.mqtt_raw import read_until_closed, remaining_length, tls_connect
from tests.support.net import free_port, wait_until
from tests.support.stack import BridgeProcess

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


def documented_fields() -> set[str]:
    text = DOCS.read_text()
    start = text.index("\n## Logs\n")
    paragraph = text[start : text.index("In text the same context", start)]
    return set(re.findall(r"`([a-z_]+)`", paragraph))


def connect(client_id: bytes) -> bytes:
    def string(raw: bytes) -> bytes:
        return struct.pack("!H", len(raw)) + raw

    variable = string(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    payload = string(client_id) + string(client_id) + string(b"not-a-token")
    return bytes([0x10]) + remaining_length(len(variable) + len(payload)) + variable + payload


def json_lines(bridge: BridgeProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]


def test_every_json_field_is_documented(tmp_path: Path, server_cert_files: dict[str, Path]) -> None:
    bridge = BridgeProcess(tmp_path, server_cert_files, free_port(), run_args=("--log-format", "json")).start()
    try:
        for client_id in (b"dev-\x1b[31m\nforged", b"dev\xff\xfe-1"):
            sock = tls_connect(bridge.mqtt_port, str(server_cert_files["ca"]))
            sock.sendall(connect(client_id))
            read_until_closed(sock)
            sock.close()

        def both_refusals_logged() -> bool:
            codes = {entry.get("code") for entry in json_lines(bridge)}
            return {"bad_identity", "malformed_packet"} <= codes

        wait_until(both_refusals_logged, 30, what="both refusals logged")
    finally:
        bridge.stop()
    lines = [line for line in bridge.log().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]  # each a JSON object of its own
    fields = {key for entry in entries for key in entry}
    assert "not_logged" in fields and "device_id" in fields and "peer" in fields
    assert fields <= documented_fields(), f"not documented: {sorted(fields - documented_fields())}"
    assert any(entry.get("device_id") == "dev-\x1b[31m\nforged" for entry in entries)
