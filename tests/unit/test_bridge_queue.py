"""A device's queue at the bridge is bounded by messages and by bytes; beyond that, messages are dropped."""

from __future__ import annotations

import asyncio

from cloud_bridge.device_queues import DeviceQueues
from cloud_bridge.errors import PermanentError
from cloud_bridge.metrics import BridgeMetrics


def count(metrics: BridgeMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("bridge_batches_total", {"outcome": outcome}) or 0.0


class Handler:
    """Records what it is handed; holds every call until `gate` opens; raises for messages starting with b'!'."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.gate = asyncio.Event()
        self._changed = asyncio.Condition()

    async def __call__(self, device_id: str, leaf: str, data: bytes) -> None:
        await self.gate.wait()
        async with self._changed:
            self.seen.append((device_id, leaf, data))
            self._changed.notify_all()
        if data.startswith(b"!"):
            raise PermanentError("cannot handle this", code="bad_message")

    async def handled(self, n: int) -> None:
        """Wait until `n` messages have been handed over."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.seen) >= n)


async def test_queue_is_bounded_by_messages_per_device() -> None:
    metrics = BridgeMetrics()
    queues = DeviceQueues(Handler(), metrics, messages=3, max_bytes=1 << 20)
    for _ in range(5):
        queues.submit("dev-a", "intents", b"x" * 10)
    queues.submit("dev-b", "intents", b"x" * 10)  # another device has a queue of its own
    assert count(metrics, "dropped_busy") == 2
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
    await asyncio.wait_for(handler.handled(3), 10)
    assert handler.seen == [("dev-a", "intents", b"1"), ("dev-a", "intents", b"!2"), ("dev-a", "intents", b"3")]
    assert (count(metrics, "error"), count(metrics, "dropped_busy")) == (1, 1)
    # Handled messages free their room: three more fit again, and a new worker takes them.
    for data in (b"5", b"6", b"7"):
        queues.submit("dev-a", "confirms", data)
    await asyncio.wait_for(handler.handled(6), 10)
    assert [d for _, _, d in handler.seen[3:]] == [b"5", b"6", b"7"]
    assert count(metrics, "dropped_busy") == 1
    await queues.close()
