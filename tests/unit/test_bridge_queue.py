"""A device's queue at the bridge is bounded by messages and by bytes; beyond that, messages are dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cloud_bridge.device_queues import DeviceQueues
from cloud_bridge.errors import PermanentError
from cloud_bridge.metrics import BridgeMetrics


def count(metrics: BridgeMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("bridge_batches_total", {"outcome": outcome}) or 0.0


class Handler:
    """A message's two stages: the first records it (`seen`) once `gate` opens, raising for messages
    starting with b'!'; the second records it as it starts (`started`) and again (`done`) once
    `second_gate` opens (open from the start unless `hold_second`), raising for messages starting with b'?'."""

    def __init__(self, *, hold_second: bool = False) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.started: list[bytes] = []
        self.done: list[bytes] = []
        self.gate = asyncio.Event()
        self.second_gate = asyncio.Event()
        if not hold_second:
            self.second_gate.set()
        self._changed = asyncio.Condition()

    async def __call__(self, device_id: str, leaf: str, data: bytes) -> Callable[[], Awaitable[None]]:
        await self.gate.wait()
        await self._note(self.seen, (device_id, leaf, data))
        if data.startswith(b"!"):
            raise PermanentError("cannot handle this", code="bad_message")

        async def second() -> None:
            await self._note(self.started, data)
            await self.second_gate.wait()
            await self._note(self.done, data)
            if data.startswith(b"?"):
                raise PermanentError("cannot admit this", code="bad_message")

        return second

    async def _note(self, into: list[Any], item: object) -> None:
        async with self._changed:
            into.append(item)
            self._changed.notify_all()

    async def handled(self, n: int, done: int = 0, started: int = 0) -> None:
        """Wait until `n` messages have been through the first stage, `started` into the second and `done`
        through it."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: len(self.seen) >= n and len(self.started) >= started and len(self.done) >= done
            )


async def test_queue_is_bounded_by_messages_per_device() -> None:
    metrics = BridgeMetrics()
    queues = DeviceQueues(Handler(), metrics, messages=3, max_bytes=1 << 20)
    for _ in range(5):
        queues.submit("dev-a", "intents", b"x" * 10)
    queues.submit("dev-b", "intents", b"x" * 10)  # another device has a queue of its own
    assert count(metrics, "dropped_busy") == 2
    await queues.close()


async def test_a_device_that_keeps_its_queue_full_gets_a_log_line_now_and_then_not_one_per_drop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line per message let one device write 3 MB of log a second; every drop is still counted."""
    metrics = BridgeMetrics()
    queues = DeviceQueues(Handler(), metrics, messages=1, max_bytes=1 << 20)
    with caplog.at_level(logging.WARNING, logger="cloud_bridge.device_queues"):
        for _ in range(1001):
            queues.submit("dev-a", "intents", b"x")
        queues.submit("dev-b", "intents", b"x")
        queues.submit("dev-b", "intents", b"x")  # another device's drop is its own line
    assert count(metrics, "dropped_busy") == 1001
    lines = [(r.getMessage(), getattr(r, "device_id", None)) for r in caplog.records]
    assert lines == [("device queue full; message dropped", "dev-a"), ("device queue full; message dropped", "dev-b")]
    await queues.close()


async def test_queue_is_bounded_by_bytes_but_a_lone_message_always_fits() -> None:
    metrics = BridgeMetrics()
    queues = DeviceQueues(Handler(), metrics, messages=100, max_bytes=1000)
    queues.submit("dev-a", "intents", b"x" * 5000)  # over the byte bound, but the queue was empty
    queues.submit("dev-a", "intents", b"x" * 10)
    assert count(metrics, "dropped_busy") == 1
    queues.submit("dev-b", "intents", b"x" * 600)
    queues.submit("dev-b", "intents", b"x" * 400)
    queues.submit("dev-b", "intents", b"x")
    assert count(metrics, "dropped_busy") == 2
    await queues.close()


async def test_each_device_s_messages_are_handled_in_order_and_an_error_does_not_stop_its_worker() -> None:
    metrics = BridgeMetrics()
    handler = Handler()
    queues = DeviceQueues(handler, metrics, messages=3, max_bytes=1 << 20)
    for data in (b"1", b"!2", b"3"):
        queues.submit("dev-a", "intents", data)
    queues.submit("dev-a", "confirms", b"4")  # the queue is full: dropped
    handler.gate.set()
    await asyncio.wait_for(handler.handled(3, done=2), 10)
    assert handler.seen == [("dev-a", "intents", b"1"), ("dev-a", "intents", b"!2"), ("dev-a", "intents", b"3")]
    assert handler.done == [b"1", b"3"]
    assert (count(metrics, "error"), count(metrics, "dropped_busy")) == (1, 1)
    # Handled messages free their room: three more fit again, and a new worker takes them.
    for data in (b"5", b"6", b"7"):
        queues.submit("dev-a", "confirms", data)
    await asyncio.wait_for(handler.handled(6), 10)
    assert [d for _, _, d in handler.seen[3:]] == [b"5", b"6", b"7"]
    assert count(metrics, "dropped_busy") == 1
    await queues.close()


async def test_the_next_message_is_judged_while_one_is_admitted_and_each_stage_keeps_the_order() -> None:
    metrics = BridgeMetrics()
    handler = Handler(hold_second=True)
    queues = DeviceQueues(handler, metrics, messages=10, max_bytes=1 << 20)
    for data in (b"1", b"?2", b"3", b"4"):
        queues.submit("dev-a", "intents", data)
    handler.gate.set()
    # The first message waits in its second stage; the second's first stage has run, no further one.
    await asyncio.wait_for(handler.handled(2), 10)
    for _ in range(20):  # room for a wrong third first stage to show
        await asyncio.sleep(0)
    assert [d for _, _, d in handler.seen] == [b"1", b"?2"]
    assert handler.done == []
    handler.second_gate.set()
    await asyncio.wait_for(handler.handled(4, done=4), 10)
    assert [d for _, _, d in handler.seen] == [b"1", b"?2", b"3", b"4"]
    assert handler.done == [b"1", b"?2", b"3", b"4"]
    assert count(metrics, "error") == 1  # the second stage's error, and the worker went on
    await queues.close()


async def test_a_message_queued_during_the_last_second_stage_is_handled_and_frees_its_room() -> None:
    metrics = BridgeMetrics()
    handler = Handler(hold_second=True)
    handler.gate.set()
    queues = DeviceQueues(handler, metrics, messages=1, max_bytes=1 << 20)
    queues.submit("dev-a", "intents", b"1")
    await asyncio.wait_for(handler.handled(1, started=1), 10)  # in its second stage, nothing queued behind it
    queues.submit("dev-a", "confirms", b"2")  # taken by the worker that is still running
    handler.second_gate.set()
    await asyncio.wait_for(handler.handled(2, done=2), 10)
    assert handler.done == [b"1", b"2"]
    for data in (b"3", b"4"):  # each handled before the next comes: a queue of one takes them all
        queues.submit("dev-a", "intents", data)
        await asyncio.wait_for(handler.handled(0, done=len(handler.done) + 1), 10)
    assert count(metrics, "dropped_busy") == 0
    await queues.close()
