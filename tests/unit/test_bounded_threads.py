"""BoundedThreads: results and exceptions come back; a call given up on keeps its place until it returns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cloud_bridge.integrations.threads import BoundedThreads


async def test_result_and_exception_come_back() -> None:
    threads = BoundedThreads(2, "t")
    assert await threads.run(lambda: threading.current_thread().daemon) is True

    def fail() -> None:
        raise OSError("no route")

    with pytest.raises(OSError, match="no route"):
        await threads.run(fail)


async def test_a_call_given_up_on_keeps_its_place_until_it_returns() -> None:
    threads = BoundedThreads(1, "t")
    release, started, returned = threading.Event(), threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait()
        returned.set()
        return "late"

    first = asyncio.create_task(threads.run(blocked))
    await asyncio.to_thread(started.wait)
    first.cancel()  # the caller stops waiting; the thread goes on
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(threads.run(returned.is_set))
    await asyncio.sleep(0)  # it would start its thread now if the place were free
    release.set()
    assert await second is True  # it ran only once the first call had returned


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedThreads(0, "t")
