"""The revocation watcher: which devices are revoked, and their connections ended, whenever they connect."""

from __future__ import annotations

from typing import cast

from cloud_bridge.registry import Registry
from cloud_bridge.revocations import RevocationWatcher
from tests.support.net import until


class _Registry:
    """The two things the watcher reads: the revocation counter and the revoked ids."""

    def __init__(self) -> None:
        self.counter = 0
        self.ids: set[str] = set()

    def revoke(self, device_id: str) -> None:
        self.ids.add(device_id)
        self.counter += 1

    def revocation_counter(self) -> int:
        return self.counter

    def revoked_ids(self) -> list[str]:
        return sorted(self.ids)


async def test_a_device_that_connects_after_its_revocation_was_seen_is_dropped() -> None:
    """A CONNECT checked before a revocation can be accepted after the poll that saw it (its signature and
    replay checks take their time). The watcher dropped devices only when the counter moved, so such a
    connection stayed; now every poll drops a connected revoked device."""
    registry = _Registry()
    connected: list[str] = ["dev-2"]
    dropped: list[str] = []

    async def drop(device_id: str) -> bool:
        dropped.append(device_id)
        connected.remove(device_id)
        return True

    watcher = RevocationWatcher(cast(Registry, registry), 0.01, connected=lambda: list(connected), drop=drop)
    await watcher.start()
    try:
        registry.revoke("dev-1")
        await until(lambda: "dev-1" in watcher.revoked, 5, what="the revocation seen")
        assert dropped == []  # dev-1 was not connected then
        connected.append("dev-1")  # its CONNECT, checked before the revocation, is accepted now
        await until(lambda: dropped == ["dev-1"], 5, what="the late connection dropped")
        registry.revoke("dev-2")
        await until(lambda: dropped == ["dev-1", "dev-2"], 5, what="a connected device dropped at its revocation")
    finally:
        await watcher.stop()
