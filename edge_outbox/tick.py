"""What `edge-outbox run`'s housekeeping writes, in one transaction a tick (edge_outbox.runner)."""

from __future__ import annotations

import sqlite3

from edge_outbox import event_log, offline_ops, ops
from edge_outbox.app_sessions import save_cursors
from edge_outbox.db import LINK_SEEN_KEY, STATUS_KEY


def link_seen(conn: sqlite3.Connection, now: int) -> int:
    """The last contact with the bridge kept by an earlier run (or, before any, this data dir's first start, kept
    now): the link's outage counts from it, not from this start. A box offline for days that restarted (a nightly
    reboot, a crash loop, a supervisor restarting it as unhealthy) was healthy again for --max-offline."""
    stored = event_log.get_meta(conn, LINK_SEEN_KEY)
    if stored is not None and stored.isdecimal():
        return int(stored)
    event_log.set_meta(conn, LINK_SEEN_KEY, str(now))
    return now


def save_positions(conn: sqlite3.Connection, positions: dict[str, int]) -> None:
    for key in (STATUS_KEY, LINK_SEEN_KEY):  # kept in meta; the others are app sessions' cursors
        value = positions.pop(key, None)
        if value is not None:
            event_log.set_meta(conn, key, str(value))
    save_cursors(conn, positions)


def tick(conn: sqlite3.Connection, now: int, changed: dict[str, int], device_id: str | None) -> tuple[int, int | None]:
    """(intents expired, intents ended as revoked: None when `device_id` is not revoked)."""
    save_positions(conn, dict(changed))
    expired = ops.expire_due(conn, now)
    ended = None if device_id is None else offline_ops.end_if_revoked(conn, device_id, now)
    return expired, ended
