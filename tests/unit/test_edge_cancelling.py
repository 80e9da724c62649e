"""raise_if_cancelled: the cancellation Python 3.11's wait_for swallows (aiomqtt waits for PUBACKs with it)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge_outbox.cancelling import raise_if_cancelled


async def _cancel_as_the_answer_arrives(check: bool) -> asyncio.Task[str]:
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def publish_then_go_on() -> str:
        await asyncio.wait_for(answer, 10)  # as aiomqtt's publish waits for its PUBACK
        if check:
            raise_if_cancelled()
        return "went on"

    task = asyncio.create_task(publish_then_go_on())
    await asyncio.sleep(0)  # the task now waits for the answer
    answer.set_result(1)  # the PUBACK and the stop in the same loop pass
    task.cancel()
    await asyncio.wait({task})
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for swallows the cancellation only on Python 3.11")
async def test_wait_for_swallows_a_cancellation_on_python_3_11() -> None:
    task = await _cancel_as_the_answer_arrives(check=False)
    assert not task.cancelled() and task.result() == "went on"


async def test_the_swallowed_cancellation_is_raised_again() -> None:
    task = await _cancel_as_the_answer_arrives(check=True)
    assert task.cancelled()


async def test_no_cancellation_goes_on() -> None:
    async def go_on() -> str:
        await asyncio.sleep(0)
        raise_if_cancelled()
        return "went on"

    assert await go_on() == "went on"
