"""`edge-outbox flush`: a technician's temporary link, used now, until everything has its result.

With `run` live on the data dir, flush asks it to connect (FLUSH_KEY in `meta`, which its forwarder
looks for once a second, also outside its forwarding windows and during a reconnect backoff) and
watches the database; without it, flush runs the forwarder itself under the data dir's lock. Either
way one process at a time holds the device's connection. It ends when no intent is pending (every
one has a final result) or at the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_outbox import db, event_log, lock, offline_ops, ops
from edge_outbox.errors import PermanentError
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import load_identity
from edge_outbox.link_gate import FLUSH_KEY
from edge_outbox.lock import LINK_KEY
from edge_outbox.ops import Summary
from edge_outbox.settings import ForwarderSettings
from edge_outbox.states import FINAL, State
from edge_outbox.store import Store

_POLL_S = 0.5

Progress = Callable[[int, int, str], None]  # (done, pending at the start, link state)


@dataclass(frozen=True, slots=True)
class Flushed:
    pending_before: int
    pending: int  # still pending at the end: 0 unless the timeout came first (or the link never did)
    ended: dict[str, int]  # intents that reached each final state meanwhile
    link: str
    revoked: bool
    seconds: float
    link_error: str = ""  # at the end, while the link was down: why its last attempt failed (a certificate, say)


def _ended(before: Summary, after: Summary) -> dict[str, int]:
    return {s.value: after.counts[s.value] - before.counts[s.value] for s in State if s in FINAL}


Watched = tuple[Summary, str, bool, str]  # the queue, the link's state, revoked, why the link's last attempt failed


def _watch_state(conn: sqlite3.Connection, data_dir: Path, device_id: str) -> Watched:
    link = (lock.running(data_dir) or {}).get(LINK_KEY)  # as the running outbox recorded it
    link = link if isinstance(link, dict) else {}
    revoked = offline_ops.revocation(conn, device_id) is not None
    return ops.summary(conn), str(link.get("state", "offline")), revoked, str(link.get("error") or "")


async def _watch(read: Callable[[], Awaitable[Watched]], timeout_s: float, progress: Progress | None) -> Flushed:
    started = time.monotonic()
    first, link, revoked, error = await read()
    last = first
    while True:
        done = max(0, first.pending - last.pending)
        if progress is not None:
            progress(done, first.pending, link)
        if last.pending == 0 or time.monotonic() - started >= timeout_s:
            break
        await asyncio.sleep(_POLL_S)
        last, link, revoked, error = await read()
    ended = {k: v for k, v in _ended(first, last).items() if v > 0}
    return Flushed(first.pending, last.pending, ended, link, revoked, time.monotonic() - started, error)


def _set_flush(data_dir: Path, until: int) -> None:
    conn = db.connect(data_dir, create=False)
    try:
        event_log.set_meta(conn, FLUSH_KEY, str(until))
    finally:
        conn.close()


async def flush(data_dir: Path, timeout_s: float, clock_ms: Callable[[], int], progress: Progress | None) -> Flushed:
    """Forward everything now and wait for the results, for up to `timeout_s` seconds."""
    identity = load_identity(data_dir)
    if identity is None:
        raise PermanentError("not enrolled: there is no bridge to flush to")
    if not identity.http_url:  # enrolled on files without a bridge address: no link can ever come
        raise PermanentError(
            "this device has no bridge address (enrolled offline): it cannot connect; its intents leave in "
            "bundles (edge-outbox export)"
        )
    if lock.running(data_dir) is not None:
        return await _through_running_outbox(data_dir, identity.device_id, timeout_s, clock_ms, progress)
    outbox_lock = lock.DataDirLock(data_dir)
    outbox_lock.acquire({"where": "edge-outbox flush", "started": clock_ms()})
    store = Store(data_dir)
    try:
        await store.start()
        forwarder = Forwarder(store, data_dir, identity, ForwarderSettings(), clock_ms)
        forwarding = asyncio.create_task(forwarder.run(), name="flush-forwarder")

        async def read() -> Watched:
            summary = await store.read(ops.summary)
            revoked = await store.read(offline_ops.revocation, identity.device_id) is not None
            link = forwarder.snapshot()
            outbox_lock.record({LINK_KEY: asdict(link)})  # for `edge-outbox status` meanwhile (no heartbeat: not run)
            return summary, link.state.value, revoked, link.error

        try:
            return await _watch(read, timeout_s, progress)
        finally:
            forwarder.request_stop()
            forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarding
    finally:
        await store.close()
        outbox_lock.release()


async def _through_running_outbox(
    data_dir: Path, device_id: str, timeout_s: float, clock_ms: Callable[[], int], progress: Progress | None
) -> Flushed:
    await asyncio.to_thread(_set_flush, data_dir, clock_ms() + int(timeout_s * 1000) + 1000)

    def read_now() -> Watched:
        conn = db.connect(data_dir, create=False)
        try:
            return _watch_state(conn, data_dir, device_id)
        finally:
            conn.close()

    async def read() -> Watched:
        return await asyncio.to_thread(read_now)

    try:
        return await _watch(read, timeout_s, progress)
    finally:
        await asyncio.to_thread(_set_flush, data_dir, 0)  # the running outbox keeps to its windows again
