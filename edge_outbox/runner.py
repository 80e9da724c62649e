"""`edge-outbox run`: wires store, intake, status and the transport together and keeps house."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from edge_outbox import ops
from edge_outbox.attach import AttachedClient
from edge_outbox.broker import EmbeddedBroker
from edge_outbox.db import LINK_KEY, STATUS_KEY, StatusEvent
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import load_identity
from edge_outbox.intake import Intake
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import OutboxSettings
from edge_outbox.states import State
from edge_outbox.status import StatusPublisher
from edge_outbox.store import Store
from intent_contract.ids import IdGenerator
from intent_contract.runtime import freeze_startup_objects

log = logging.getLogger(__name__)

EVENT_KEEP_MS = 3600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    """The running outbox. `start()` returns once it serves; `stop()` shuts it down in order."""

    def __init__(self, settings: OutboxSettings) -> None:
        self.settings = settings
        self._transport: EmbeddedBroker | AttachedClient | None = None
        self.status = StatusPublisher(self._publish, self._has_subscriber)
        self.store = Store(settings.data_dir, on_events=self._on_events)
        self.forwarder: Forwarder | None = None
        self._forwarding: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _on_events(self, events: list[StatusEvent]) -> None:
        self.status.on_events(events)
        if self.forwarder is not None and any(e.state is State.ACCEPTED for e in events):
            self.forwarder.wake()

    async def _publish(self, topic: str, payload: bytes) -> None:
        if self._transport is not None:
            await self._transport.publish(topic, payload)

    def _has_subscriber(self, topic: str) -> bool:
        # An attached broker's subscriptions are not visible from here: always publish there.
        return not isinstance(self._transport, EmbeddedBroker) or self._transport.has_subscriber(topic)

    async def start(self) -> None:
        s = self.settings
        await self.store.start(replay_key=STATUS_KEY)
        intake = Intake(
            self.store,
            self.status,
            QueueLimits(s.max_queue_items, s.max_queue_bytes),
            now_ms,
            IdGenerator(now_ms, os.urandom),
        )
        if s.attach is not None:
            self._transport = AttachedClient(s.attach, intake)
        else:
            self._transport = EmbeddedBroker(s.listen_host, s.listen_port, intake, s.users)
        try:
            await self._transport.start()
        except BaseException:
            await self.store.close()
            raise
        self._tasks = [
            asyncio.create_task(self.status.run(), name="status"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        identity = load_identity(s.data_dir)
        if identity is None:
            log.warning(
                "not enrolled with a bridge: intents are kept here until `edge-outbox enroll` is run "
                "and the outbox restarted"
            )
        elif s.forward:
            self.forwarder = Forwarder(self.store, s.data_dir, identity, s.forwarder, now_ms)
            self._forwarding = asyncio.create_task(self.forwarder.run(), name="forwarder")
            self._tasks.append(self._forwarding)
            log.info("forwarding as device %s to %s", identity.device_id, identity.bridge_host)
        where = (
            f"attached to mqtt://{s.attach.host}:{s.attach.port}"
            if s.attach
            else f"listening on {s.listen_host}:{s.listen_port}"
        )
        log.info("edge outbox %s, data in %s", where, s.data_dir)

    async def stop(self) -> None:
        if self._forwarding is not None:
            self._forwarding.cancel()  # stop sending first; everything unacknowledged is resent next time
        if self._transport is not None:
            await self._transport.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.status.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.call(ops.set_meta, STATUS_KEY, str(self.status.published_seq))
        await self.store.close()

    async def _housekeeping(self) -> None:
        """Expire overdue intents, remember how far statuses went out, purge what retention allows.

        One transaction a tick, and it writes only what changed, so an idle outbox does not fsync.
        """
        last_purge = 0.0
        written: dict[str, str] = {}
        while True:
            await asyncio.sleep(self.settings.housekeeping_s)
            try:
                now = now_ms()
                current = {STATUS_KEY: str(self.status.published_seq)}
                if self.forwarder is not None:
                    current[LINK_KEY] = json.dumps(asdict(self.forwarder.snapshot()))
                changed = {k: v for k, v in current.items() if written.get(k) != v}
                expired = await self.store.call(_tick, now, changed)
                written.update(changed)
                if expired:
                    log.info("%d intents expired before they could be forwarded", expired)
                if time.monotonic() - last_purge > 3600:
                    last_purge = time.monotonic()
                    purged = await self.store.call(ops.purge, now - int(self.settings.retention_s * 1000))
                    await self.store.call(ops.prune_events, self.status.published_seq, now - EVENT_KEEP_MS)
                    if purged:
                        log.info("retention: purged %d final intents", purged)
            except Exception:
                log.exception("housekeeping failed; trying again")


def _tick(conn: sqlite3.Connection, now: int, meta: dict[str, str]) -> int:
    for key, value in meta.items():
        ops.set_meta(conn, key, value)
    return ops.expire_due(conn, now)


async def serve(settings: OutboxSettings, ready: Callable[[], Awaitable[None] | None] | None = None) -> None:
    """Run until SIGINT or SIGTERM."""
    outbox = Outbox(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start(): the port opens inside it, and a SIGTERM from then on must stop us cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await outbox.start()
    freeze_startup_objects()
    if ready is not None:
        result = ready()
        if result is not None:
            await result
    await stop.wait()
    log.info("stopping")
    await outbox.stop()
