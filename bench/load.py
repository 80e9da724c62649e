"""Load generators built on bench.mqttraw: timed QoS 1 publishers, a counting subscriber."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.mqttraw import MqttClient, MqttError

APP = "bench-app"
TOPIC = f"outbox/{APP}/http.request"


@dataclass(frozen=True, slots=True)
class PublishResult:
    acked: int
    elapsed_s: float  # first publish to last PUBACK

    @property
    def rate(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def publish_timed(
    port: int,
    clients: int,
    seconds: float,
    body: Callable[[int], bytes],
    *,
    window: int = 100,
    topic: str = TOPIC,
    max_messages: int | None = None,
) -> PublishResult:
    """`clients` connections publish QoS 1 with up to `window` unacknowledged each, for `seconds`
    (or until `max_messages` in all); returns how many PUBACKs came back and over what time."""
    conns = [
        await MqttClient.connect("127.0.0.1", port, f"bench-pub-{i}-{time.monotonic_ns()}") for i in range(clients)
    ]
    counter = {"sent": 0, "acked": 0}
    last_ack = [0.0]
    start = time.monotonic()
    deadline = start + seconds

    def done(fut: asyncio.Future[None], sem: asyncio.Semaphore) -> None:
        sem.release()
        if not fut.cancelled() and fut.exception() is None:
            counter["acked"] += 1
            last_ack[0] = time.monotonic()

    async def run(conn: MqttClient) -> None:
        sem = asyncio.Semaphore(window)
        while time.monotonic() < deadline and (max_messages is None or counter["sent"] < max_messages):
            await sem.acquire()
            n = counter["sent"]
            counter["sent"] += 1
            fut = conn.publish(topic, body(n))
            fut.add_done_callback(lambda f, s=sem: done(f, s))
            if n % 50 == 0:
                await conn.drain()
        for _ in range(window):  # wait for every outstanding PUBACK
            await asyncio.wait_for(sem.acquire(), 120)

    try:
        await asyncio.gather(*(run(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return PublishResult(counter["acked"], max(last_ack[0] - start, 1e-9))


class CountingSubscriber:
    """Subscribes with a persistent session and counts (and times) what arrives."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.client: MqttClient | None = None

    def _on_message(self, _topic: str, _payload: bytes) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now

    async def start(self, port: int, topic: str, client_id: str = "bench-sub") -> CountingSubscriber:
        self.client = await MqttClient.connect("127.0.0.1", port, client_id, clean=False)
        self.client.on_message = self._on_message
        await self.client.subscribe(topic, 1)
        return self

    async def wait_quiet(self, expected: int, quiet_s: float, timeout: float) -> None:
        """Until `expected` arrived, or nothing new arrived for `quiet_s` after the first, or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.count < expected:
            await asyncio.sleep(0.05)
            if self.count and time.monotonic() - self.last > quiet_s:
                return

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


__all__ = ["CountingSubscriber", "MqttError", "PublishResult", "publish_timed"]
