"""The connect gate on a real SQLite registry: refusals are counted each, and logged a line a second per code."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from cloud_bridge.device_gate import DeviceGate
from cloud_bridge.registry_sqlite import SqliteRegistry
from intent_contract.device_token import generate_private_key_pem, public_key_pem


async def test_a_flood_of_refused_connects_is_counted_each_and_logged_once_a_second_per_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connects with bad tokens need no credentials; a line each let anyone write 300 lines a second."""
    registry = SqliteRegistry(tmp_path / "registry.db")
    registry.open()
    code = registry.create_code("acme", "boiler-1", 3600, time.time())
    device_id = registry.redeem(code, public_key_pem(generate_private_key_pem()), time.time()).device_id
    refused: list[str] = []
    gate = DeviceGate(registry, "cloud-bridge", on_refused=refused.append, clock=lambda: 1000.0)
    with caplog.at_level(logging.WARNING, logger="cloud_bridge.device_gate"):
        for _ in range(200):
            assert not await gate.authenticate(device_id, device_id, "not-a-token", "192.0.2.7")
        assert not await gate.authenticate("ghost", "ghost", "not-a-token", "192.0.2.8")
    assert refused == ["token_invalid"] * 200 + ["unknown_device"]
    assert [(r.getMessage(), getattr(r, "code", None)) for r in caplog.records] == [
        ("device connect refused", "token_invalid"),
        ("device connect refused", "unknown_device"),
    ]


async def test_a_device_row_this_version_cannot_read_is_refused_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored name that no longer passes the name rules (written by hand, or by a looser older version)
    made `Device` raise ValueError at every connect of that device: it went past the door's handler, which
    closed the connection with no CONNACK and left asyncio to print "Task exception was never retrieved"."""
    registry = SqliteRegistry(tmp_path / "registry.db")
    registry.open()
    code = registry.create_code("acme", "boiler-1", 3600, time.time())
    device_id = registry.redeem(code, public_key_pem(generate_private_key_pem()), time.time()).device_id
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE devices SET name = 'boiler 1 / old' WHERE device_id = ?", (device_id,))
    refused: list[str] = []
    gate = DeviceGate(registry, "cloud-bridge", on_refused=refused.append)
    with caplog.at_level(logging.WARNING, logger="cloud_bridge.device_gate"):
        assert not await gate.authenticate(device_id, device_id, "a-token", "192.0.2.7")
    assert refused == ["internal_error"]
    [record] = caplog.records
    assert record.levelno == logging.ERROR and getattr(record, "code", None) == "internal_error"
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "a-token" not in caplog.text
