"""The revocation watcher on a real SQLite registry: connected revoked devices are dropped, whenever they connect."""

from __future__ import annotations

import time
from pathlib import Path

from cloud_bridge.registry_sqlite import SqliteRegistry
from cloud_bridge.revocations import RevocationWatcher
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.net import until


async def test_a_device_that_connects_after_its_revocation_was_seen_is_dropped(tmp_path: Path) -> None:
    """A CONNECT checked before a revocation can be accepted after the poll that saw it (its signature and
    replay checks take their time). The watcher dropped devices only when the counter moved, so such a
    connection stayed; now every poll drops a connected revoked device."""
    registry = SqliteRegistry(tmp_path / "registry.db")
    registry.open()
    first, second = (
        registry.redeem(
            registry.create_code("acme", name, 3600, time.time()),
            public_key_pem(generate_private_key_pem()),
            time.time(),
        ).device_id
        for name in ("boiler-1", "boiler-2")
    )
    connected: dict[str, str] = {second: registry.get(second).public_key}  # type: ignore[union-attr]
    dropped: list[str] = []

    async def drop(device_id: str, key: str | None) -> bool:
        dropped.append(device_id)
        del connected[device_id]
        return True

    watcher = RevocationWatcher(registry, 0.01, sessions=lambda: dict(connected), drop=drop)
    await watcher.start()
    try:
        registry.revoke(first, time.time())
        await until(lambda: first in watcher.revoked, 5, what="the revocation seen")
        assert dropped == []  # the device was not connected then
        connected[first] = registry.get(first).public_key  # type: ignore[union-attr]  # its CONNECT, checked before the revocation, is accepted now
        await until(lambda: dropped == [first], 5, what="the late connection dropped")
        registry.revoke(second, time.time())
        await until(lambda: dropped == [first, second], 5, what="a connected device dropped at its revocation")
    finally:
        await watcher.stop()
