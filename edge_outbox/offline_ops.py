"""The store's side of the offline paths, as plain functions on a sqlite3 connection (like ops.py).

The bridge's clock and this device's revocation are kept in `meta`, so the running outbox, `flush`,
`export` and `import-receipt` share them; final results taken from a receipt wait in `confirm_queue`
for the next bundle to confirm them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from edge_outbox import ops
from edge_outbox.bridge_clock import BridgeClock, TimeSample
from edge_outbox.db import CLOCK_KEY, REVOKED_KEY, IntentRow
from edge_outbox.states import PENDING, sql_set

# Ids confirmed per bundle: a receipt's results beyond it are confirmed by the next bundle.
MAX_BUNDLE_CONFIRMS = 20_000


def bridge_clock(conn: sqlite3.Connection) -> BridgeClock:
    return BridgeClock.from_json(ops.get_meta(conn, CLOCK_KEY))


def learn_time(conn: sqlite3.Connection, sample: TimeSample, now: int) -> BridgeClock:
    """Move the stored bridge clock by what `sample` proves; returns the clock now stored."""
    before = bridge_clock(conn)
    after = before.learn(sample, now)
    if after is not before:
        ops.set_meta(conn, CLOCK_KEY, after.to_json())
    return after


def _revoked_key(device_id: str) -> str:
    return f"{REVOKED_KEY}:{device_id}"


def revocation(conn: sqlite3.Connection, device_id: str) -> dict[str, object] | None:
    """{"at": ms, "source": text} when the bridge said device `device_id` is revoked, else None.

    Kept per device id: a data dir enrolled again is a new device, which the old one's revocation does not
    touch, while the old identity stays revoked should it come back. A record an older outbox kept without
    a device id (REVOKED_KEY alone) was said of the identity it had, which is this one until the data dir is
    enrolled again (`adopt_identity` drops it then).
    """
    text = ops.get_meta(conn, _revoked_key(device_id))
    if text is None:
        text = ops.get_meta(conn, REVOKED_KEY)
    return None if text is None else dict(json.loads(text))


def mark_revoked(conn: sqlite3.Connection, device_id: str, at: int, source: str) -> None:
    if ops.get_meta(conn, _revoked_key(device_id)) is None:
        ops.set_meta(conn, _revoked_key(device_id), json.dumps({"at": at, "source": source}))


def end_if_revoked(conn: sqlite3.Connection, device_id: str, now: int) -> int | None:
    """End every pending intent when `device_id` is revoked (how many); None when it is not revoked."""
    if revocation(conn, device_id) is None:
        return None
    return ops.end_revoked(conn, now)


def adopt_identity(conn: sqlite3.Connection, device_id: str) -> None:
    """This data dir was just enrolled as `device_id` (enroll, enroll-import): what was said of the identity
    it had before is not said of this one."""
    conn.execute("DELETE FROM meta WHERE key = ?", (REVOKED_KEY,))


def pending_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM intents WHERE state IN {sql_set(PENDING)}").fetchone()[0])


def take_for_export(
    conn: sqlite3.Connection,
    *,
    fits: Callable[[list[IntentRow]], bool],
    batch_items: int,
    batch_bytes: int,
    now: int,
) -> list[list[IntentRow]]:
    """Every intent the bridge has not accepted yet, in forwarding batches, marked sent, while `fits(batch)`.

    Marked sent like a forwarded batch: from now on the bridge may have them, so they can no longer be
    cancelled or expired here. Each row is taken once (it is now sent at `now`); they go out again in
    the next export or over MQTT until the bridge acknowledges them.
    """
    batches: list[list[IntentRow]] = []
    while True:
        rows = ops.next_batch(conn, limit=batch_items, max_bytes=batch_bytes, sent_before=now)
        if not rows or not fits(rows):
            return batches
        ops.mark_sent(conn, [r.seq for r in rows], now)  # these rows: `fits` may have ended some (not sendable)
        batches.append(rows)


def queue_confirms(conn: sqlite3.Connection, ids: list[str]) -> None:
    conn.executemany("INSERT OR IGNORE INTO confirm_queue(id) VALUES (?)", [(i,) for i in ids])


def confirms_to_send(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id FROM confirm_queue ORDER BY id LIMIT ?", (MAX_BUNDLE_CONFIRMS,))]


def drop_confirms(conn: sqlite3.Connection, ids: list[str]) -> None:
    """Forget confirms a written bundle carries (if it is lost, the next receipt names them again)."""
    conn.executemany("DELETE FROM confirm_queue WHERE id = ?", [(i,) for i in ids])
