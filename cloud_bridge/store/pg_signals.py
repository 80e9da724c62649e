"""Signals between bridge nodes over PostgreSQL LISTEN/NOTIFY, on one dedicated connection per node.

The ledger notifies in the transaction that commits the change, so a signal is never seen before the
row it names. Payloads carry the sending node, and a node ignores its own (it acted already). A lost
connection is reopened with backoff; since signals may have been missed meanwhile, every device held
here is then treated as having new results, and the executor is woken. An operator's cancel of a
running row is signalled on a channel of its own (CANCEL_CHANNEL, the device's id: cloud_bridge.cancel_sql),
so that a node looks for cancels asked of its rows only then, not on every result.

A connection that waits for notifications sends nothing, so nothing tells it that its link went silent (a
failover behind a TCP proxy, a NAT that forgot it): it waited for ever, and the node heard no other node's
results again until each of its devices reconnected. It is asked a trivial query every `timeout` seconds,
which must answer within `timeout` (`pg_deadline`), else it is opened again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from cloud_bridge.store.pg_admit import WORK_CHANNEL
from cloud_bridge.store.pg_deadline import DEFAULT_STORE_TIMEOUT, async_limit
from cloud_bridge.store.pg_jobs import RESULTS_CHANNEL
from cloud_bridge.store.pg_pools import database_error
from intent_contract.backoff import compute_backoff
from intent_contract.logs import FailureEpisode

logger = logging.getLogger(__name__)

ALL_DEVICES = "*"
CANCEL_CHANNEL = "bridge_cancel_asks"


def _ignore(_device_id: str) -> None:
    return None


class PgSignals:
    """The Signals protocol on LISTEN/NOTIFY."""

    def __init__(self, conninfo: str, *, node: str, timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        self._conninfo = conninfo
        self._node = node
        self._timeout = timeout
        self._episode = FailureEpisode(logger, "store signals lost (other nodes' results are heard on reconnect)")
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while the LISTEN connection is up (for tests)
        self._on_cancel: Callable[[str], None] = _ignore

    async def start(
        self, on_results: Callable[[str], None], on_work: Callable[[], None], on_cancel: Callable[[str], None] = _ignore
    ) -> None:
        """Listen until `stop()`; returns once the first LISTEN is in place (or its first attempt failed)."""
        if self._task is not None:
            raise RuntimeError("signals already started")
        first = asyncio.get_running_loop().create_future()
        self._on_cancel = on_cancel
        self._task = asyncio.create_task(self._run(on_results, on_work, first), name="store-signals")
        await first

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(
        self, on_results: Callable[[str], None], on_work: Callable[[], None], first: asyncio.Future[None]
    ) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    with async_limit(conn, self._timeout):
                        await conn.execute(f"LISTEN {RESULTS_CHANNEL}; LISTEN {WORK_CHANNEL}; LISTEN {CANCEL_CHANNEL}")
                    self.listening.set()
                    if not first.done():
                        first.set_result(None)
                    elif failures:
                        on_results(ALL_DEVICES)  # what was signalled while we were away
                        on_work()
                        self._on_cancel(ALL_DEVICES)
                    failures = 0
                    self._episode.worked()
                    while True:
                        async for notice in conn.notifies(timeout=self._timeout):
                            self._dispatch(notice.channel, notice.payload, on_results, on_work)
                        with async_limit(conn, self._timeout):  # is the link still there?
                            await conn.execute("SELECT 1")
            except psycopg.Error as exc:
                self.listening.clear()
                failures += 1
                delay = compute_backoff(failures, base=0.2, cap=5.0, jitter=0.5)
                self._episode.failed(database_error(exc, "store"))  # one line for an outage, not one per try
                if not first.done():
                    first.set_result(None)
                await asyncio.sleep(delay)

    def _dispatch(
        self, channel: str, payload: str, on_results: Callable[[str], None], on_work: Callable[[], None]
    ) -> None:
        if channel == WORK_CHANNEL:
            if payload != self._node:
                on_work()
            return
        if channel == CANCEL_CHANNEL:
            self._on_cancel(payload)
            return
        device_id, _, node = payload.rpartition(" ")
        if device_id and node != self._node:
            on_results(device_id)


def operator_signal(node: str) -> Callable[[Any, str], None]:
    """`intent_sql.Signal` for PostgreSQL: NOTIFY every node, this one too (the dashboard runs in a node)."""
    sender = f"{node}/operator"

    def signal(conn: Any, device_id: str) -> None:
        conn.execute("SELECT pg_notify(%s, %s), pg_notify(%s, %s)",
                     (RESULTS_CHANNEL, f"{device_id} {sender}", WORK_CHANNEL, sender))  # fmt: skip

    return signal


def cancel_signal(conn: Any, device_id: str) -> None:
    """`SqlIntents.ask_signal` for PostgreSQL: a cancel asked of a running row of `device_id`, to every node."""
    conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, device_id))
