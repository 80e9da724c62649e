"""The store's side of the offline paths, as plain functions on a sqlite3 connection (like ops.py).

The bridge's clock and this device's revocation are kept in `meta`, so the running outbox, `flush`,
`export` and `import-receipt` share them; final results taken from a receipt wait in `confirm_queue`
for the next bundle to confirm them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from edge_outbox import event_log, forward_ops, ops
from edge_outbox.bridge_clock import BridgeClock, TimeSample
from edge_outbox.db import CLOCK_KEY, REVOKED_KEY, SENT_AS_KEY, IntentRow
from edge_outbox.states import PENDING, Event, sources, sql_set, target
from intent_contract.offline_wire import MAX_BUNDLE_INTENTS

# Pending intents already sent to the bridge (only a state an intent may still be cancelled in can mean
# "never sent": forwarded means the bridge has it), which a new identity must not send again.
_SENT_PENDING = (
    f"state IN {sql_set(sources(Event.IDENTITY_CHANGED))}"
    f" AND NOT (state IN {sql_set(sources(Event.IDENTITY_CHANGED) & sources(Event.CANCEL))} AND sent = 0)"
)
# Ids confirmed per bundle: twice the intents a bundle carries, so that the results of a full bundle (which
# its receipt brings) are confirmed by the next one, and a backlog of them drains. At 20,000 (under the
# 50,000 intents a bundle carries) every trip of a full bundle left 30,000 results unconfirmed at the bridge:
# named again in every receipt, never purged, growing by as much per trip.
MAX_BUNDLE_CONFIRMS = 2 * MAX_BUNDLE_INTENTS


def bridge_clock(conn: sqlite3.Connection) -> BridgeClock:
    return BridgeClock.from_json(event_log.get_meta(conn, CLOCK_KEY))


def learn_time(conn: sqlite3.Connection, sample: TimeSample, now: int) -> BridgeClock:
    """Move the stored bridge clock by what `sample` proves; returns the clock now stored."""
    before = bridge_clock(conn)
    after = before.learn(sample, now)
    if after is not before:
        event_log.set_meta(conn, CLOCK_KEY, after.to_json())
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
    text = event_log.get_meta(conn, _revoked_key(device_id))
    if text is None:
        text = event_log.get_meta(conn, REVOKED_KEY)
    return None if text is None else dict(json.loads(text))


def mark_revoked(conn: sqlite3.Connection, device_id: str, at: int, source: str) -> None:
    if event_log.get_meta(conn, _revoked_key(device_id)) is None:
        event_log.set_meta(conn, _revoked_key(device_id), json.dumps({"at": at, "source": source}))


def end_if_revoked(conn: sqlite3.Connection, device_id: str, now: int) -> int | None:
    """End every pending intent when `device_id` is revoked (how many); None when it is not revoked."""
    if revocation(conn, device_id) is None:
        return None
    return ops.end_revoked(conn, now)


def adopt_identity(conn: sqlite3.Connection, device_id: str, now: int) -> int:
    """This data dir was just enrolled as `device_id` (enroll, enroll-import): what was said of the identity
    it had before is not said of this one, and what it sent is ended (`send_as`); how many intents ended.

    Enrolling needs a data dir with no identity, so an intent sent before was sent as another device, also
    in a database that does not say which (an older outbox's).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM meta WHERE key = ?", (REVOKED_KEY,))
        ended = send_as(conn, device_id, now, enrolled=True)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ended


def send_as(conn: sqlite3.Connection, device_id: str, now: int, *, enrolled: bool = False) -> int:
    """Make `device_id` the device this database's intents are sent as, before anything is sent (the
    forwarder's start, each export); how many intents ended.

    An intent sent as another device (this data dir was enrolled again since) must not go out again as this
    one: the bridge keeps one row per (device, intent id), so it would run twice. Its result can reach only
    the old device, so it ends here `failed`/`identity_changed`: sent, it may have run. Never-sent intents
    stay, to go out as the new device. A database that names no device is an older outbox's: unless this
    is an enrollment, it sent as the identity it has now.
    """
    before = event_log.get_meta(conn, SENT_AS_KEY)
    if before == device_id:
        return 0
    event_log.set_meta(conn, SENT_AS_KEY, device_id)
    if before is None and not enrolled:
        return 0
    return _end_sent_as_another(conn, before, device_id, now)


def _end_sent_as_another(conn: sqlite3.Connection, before: str | None, device_id: str, now: int) -> int:
    sender = f"device {before}" if before else "the device this data dir was before"
    detail = (
        f"sent to the bridge as {sender}; this data dir was enrolled again as device {device_id}, so it is not"
        " sent again and its result cannot reach this outbox (the bridge's audit log of that device knows"
        " whether it ran)"
    )
    return int(
        conn.execute(
            f"UPDATE intents SET state = ?, code = 'identity_changed', detail = ?, updated = ? WHERE {_SENT_PENDING}",
            (target(Event.IDENTITY_CHANGED), detail, now),
        ).rowcount
    )


def in_doubt(conn: sqlite3.Connection) -> int:
    """Intents sent and not yet answered: what enrolling again as another device ends (`adopt_identity`)."""
    pending = sql_set(sources(Event.IDENTITY_CHANGED))
    unsent = sql_set(sources(Event.IDENTITY_CHANGED) & sources(Event.CANCEL))
    row = conn.execute(
        f"SELECT COUNT(*) FROM intents WHERE state IN {pending} AND NOT (state IN {unsent} AND sent = 0)"
    )
    return int(row.fetchone()[0])


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
        rows = forward_ops.next_batch(conn, limit=batch_items, max_bytes=batch_bytes, sent_before=now, now=now)
        if not rows or not fits(rows):
            return batches
        forward_ops.mark_sent(conn, [r.seq for r in rows], now)  # these rows: `fits` may have ended some (not sendable)
        batches.append(rows)


def queue_confirms(conn: sqlite3.Connection, ids: list[str]) -> None:
    conn.executemany("INSERT OR IGNORE INTO confirm_queue(id) VALUES (?)", [(i,) for i in ids])


def confirms_to_send(conn: sqlite3.Connection, max_bytes: int) -> dict[int | None, list[str]]:
    """Ids to confirm in a bundle, by the attempt whose result this outbox applied (None: the intent was purged
    here since); at most MAX_BUNDLE_CONFIRMS, whose encoding takes at most `max_bytes`.

    An id whose intent is pending again here (retried at the bridge since: its `accepted` came) is left in
    the queue: the result this outbox has is of an attempt the bridge replaced. The attempt goes with the
    confirm: a bundle reaches the bridge days later, and a confirm of attempt 1 confirmed the result of an
    operator's retry finished meanwhile, which then never reached this outbox.
    """
    rows = conn.execute(
        "SELECT q.id, (SELECT json_array(i.state, i.attempt) FROM intents i WHERE i.id = q.id AND i.state <> 'rejected'"
        " ORDER BY i.seq DESC LIMIT 1) FROM confirm_queue q ORDER BY q.id LIMIT ?",
        (MAX_BUNDLE_CONFIRMS,),
    )
    by_attempt: dict[int | None, list[str]] = {}
    used = 0
    for intent_id, found in rows:
        attempt = None
        if found is not None:
            state, attempt = json.loads(found)
            if state in PENDING:
                continue
        used += len(intent_id) + 2  # msgpack: a str of up to 64 ASCII characters and its header
        if used > max_bytes:
            break
        by_attempt.setdefault(attempt, []).append(intent_id)
    return by_attempt


def drop_confirms(conn: sqlite3.Connection, ids: list[str]) -> None:
    """Forget confirms a written bundle carries (if it is lost, the next receipt names them again)."""
    conn.executemany("DELETE FROM confirm_queue WHERE id = ?", [(i,) for i in ids])
