"""A step of the edge's wall clock while the outbox runs (edge_outbox.clock_steps): noticed against the boot
clock, and carried into what this run stored, on a real outbox database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_outbox import db, offline_ops, ops, retention
from edge_outbox.bridge_clock import TimeSample
from edge_outbox.clock_steps import STEP_MS, LocalClock, carry, run_start
from edge_outbox.intake_rules import admit
from edge_outbox.ops import QueueLimits
from edge_outbox.states import State

BOOTED = 946_684_800_000  # a flat RTC battery: 2000-01-01
DAY = 86_400_000
MS = 1_000_000  # ns


class Clocks:
    """A wall clock the test steps, and a boot clock no step moves (ns)."""

    def __init__(self) -> None:
        self.boot = 5_000 * MS
        self.wall_offset = BOOTED * MS - self.boot

    def wall(self) -> int:
        return self.boot + self.wall_offset


def test_a_step_is_told_apart_from_time_passing_and_followed_once_carried() -> None:
    clocks = Clocks()
    clock = LocalClock(clocks.wall, lambda: clocks.boot)
    clocks.boot += 3_600_000 * MS  # an hour passes
    assert (clock.now_ms(), clock.step_ms()) == (BOOTED + 3_600_000, 0)
    clocks.wall_offset += (STEP_MS - 1) * MS  # NTP slews, or steps by less than a step
    assert clock.step_ms() == 0
    clocks.wall_offset += DAY * MS  # NTP steps a day forward
    assert clock.now_ms() == BOOTED + 3_600_000  # not followed until the store's times are moved
    step = clock.step_ms()
    assert step == DAY + STEP_MS - 1
    clock.follow(step)
    assert (clock.now_ms(), clock.step_ms(), clock.since_ms) == (clocks.wall() // MS, 0, BOOTED + step)
    clocks.wall_offset -= 2 * DAY * MS  # and back
    assert clock.step_ms() == -2 * DAY


def _take(conn: sqlite3.Connection, intent_id: str, now: int, ttl: int = 3600) -> None:
    raw = f'{{"id": "{intent_id}", "to": "ops@example.com", "subject": "s", "text": "t", "ttl": {ttl}}}'.encode()
    decision = admit("outbox/app/email.send", raw, now, lambda: "unused")
    ops.commit_intake(conn, decision, QueueLimits(0, 0), now)


def test_what_this_run_stored_moves_with_the_step_and_nothing_older(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    try:
        before_run = BOOTED - 30 * DAY  # stored by an earlier boot, on a clock no one knows now
        _take(conn, "earlier-boot", before_run)
        start = run_start(conn)
        since = BOOTED
        _take(conn, "pending", BOOTED + 60_000)
        _take(conn, "ended", BOOTED + 61_000)
        ops.cancel(conn, "ended", BOOTED + 62_000)
        offline_ops.learn_time(conn, TimeSample(DAY, DAY, "enroll"), BOOTED + 63_000)  # the bridge: a day ahead
        step = DAY  # NTP sets the clock right
        now = BOOTED + 120_000 + step

        bridge = carry(conn, step, start, since, BOOTED + 120_000)

        assert bridge.offset_ms == 0 and bridge.learned_at == BOOTED + 63_000 + step
        assert offline_ops.bridge_clock(conn) == bridge
        pending, ended, earlier = ops.get(conn, "pending"), ops.get(conn, "ended"), ops.get(conn, "earlier-boot")
        assert (pending.created, pending.expires) == (BOOTED + 60_000 + step, BOOTED + 60_000 + 3_600_000 + step)
        assert ended.updated == BOOTED + 62_000 + step
        assert (earlier.created, earlier.updated) == (before_run, before_run)
        # Before: every deadline of this run was a day past at the next tick, and retention took the run's ends.
        assert ops.expire_due(conn, now) == 1  # the earlier boot's, a month overdue on any clock
        assert ops.get(conn, "pending").state is State.ACCEPTED
        assert retention.purge(conn, now - 3_600_000, dry_run=True) == 0  # an hour's retention keeps the run's end
        ats = [row[0] for row in conn.execute("SELECT at FROM events ORDER BY seq")]
        assert ats[0] == before_run and all(at > BOOTED + step for at in ats[1:-1])
    finally:
        conn.close()
