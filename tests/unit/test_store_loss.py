"""`StoreLoss`: a node's device sessions are closed only once the shared store has not answered for the lease."""

from __future__ import annotations

import asyncio

from cloud_bridge.store_loss import StoreLoss


async def test_sessions_are_closed_past_the_lease_without_an_answer_and_kept_before() -> None:
    now = [100.0]
    sessions = ["d1", "d2"]
    dropped: list[tuple[str, str | None]] = []

    async def drop(device_id: str, key: str | None) -> bool:
        dropped.append((device_id, key))
        sessions.remove(device_id)
        return True

    loss = StoreLoss(30.0, sessions=lambda: list(sessions), drop=drop, monotonic=lambda: now[0])
    now[0] = 129.0
    await loss.failed()  # a poll failed, but the store answered 29 s ago: a failover, a reset connection
    assert dropped == []
    loss.worked()
    now[0] = 158.0
    await loss.failed()
    assert dropped == []
    now[0] = 160.0
    await loss.failed()
    assert dropped == [("d1", None), ("d2", None)]
    sessions.append("d3")  # got in meanwhile (a connect that read the registry before the cut)
    await loss.failed()
    assert dropped[-1] == ("d3", None)
    loss.worked()
    sessions.append("d4")
    await loss.failed()  # answered just now: kept
    assert dropped[-1] == ("d3", None)


async def test_the_sessions_are_closed_together_not_one_after_the_other() -> None:
    """Each close waits for its connection to end (`MqttFrontDoor.drop`, up to a second): one after the other,
    a node holding thousands of devices took that many waits, its revocation poll stuck meanwhile. Here each
    close ends only once every close has begun: one after the other, the first never ends."""
    sessions = [f"d{n}" for n in range(50)]
    begun: list[str] = []
    all_begun = asyncio.Event()

    async def drop(device_id: str, _key: str | None) -> bool:
        begun.append(device_id)
        if len(begun) == len(sessions):
            all_begun.set()
        await all_begun.wait()
        return True

    now = [0.0]
    loss = StoreLoss(30.0, sessions=lambda: list(sessions), drop=drop, monotonic=lambda: now[0])
    now[0] = 31.0
    async with asyncio.timeout(10):  # the bound of a failure: together they end at once
        await loss.failed()
    assert sorted(begun) == sorted(sessions)
