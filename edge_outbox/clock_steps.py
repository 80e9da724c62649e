"""Steps of this device's wall clock while the outbox runs, carried into the times it stored.

A box that booted on a wrong clock (a flat RTC battery: 1970, 2000, or its last shutdown) is set right by NTP
later, a jump of hours or years, forward or back; a hand correction steps it too. What the outbox stored before
the step is on the clock before it: an intent's created time and deadline, when it last changed, a status's
time, and the bridge's clock as learned (an offset from this one). Read on the clock after, an intent with a
one-hour ttl taken in a minute before NTP stepped the clock a day forward was a day overdue: the next tick
expired it unsent, and one sent first reached the bridge created a day ago and expired there. A step back kept
deadlines and retention that far in the future.

The outbox's clock (`LocalClock.now_ms`) is the boot clock (CLOCK_BOOTTIME: no step moves it, and it runs
through a suspend, as real time does) plus the wall clock's offset from it when the outbox started. A step
shows as that offset moving. The housekeeping tick carries it into the store in one operation (`carry`) and
only then follows it, so the outbox reads the clock before the step until what it stored is on the clock after.
Only what this run stored is moved: rows from before it (another boot) are on a clock no one can know now.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_outbox import event_log, offline_ops
from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.db import CLOCK_KEY
from edge_outbox.states import FINAL, PENDING, state_in
from edge_outbox.store import Store
from intent_contract.timefmt import format_age

log = logging.getLogger(__name__)

# A smaller move is not a step: NTP slews the clock by at most 0.5 ms a second, which never moves the boot clock's
# offset from it, and a few seconds change no deadline an app can set (ttl is in seconds) nor any token's validity.
STEP_MS = 2_000


def _boot_ns() -> int:
    boot = getattr(time, "CLOCK_BOOTTIME", None)  # Linux; elsewhere the monotonic clock (it stops in a suspend)
    return time.clock_gettime_ns(boot) if boot is not None else time.monotonic_ns()


class LocalClock:
    """This outbox's clock (ms since the epoch): the wall clock, whose steps it follows once told to."""

    def __init__(self, wall: Callable[[], int] = time.time_ns, boot: Callable[[], int] = _boot_ns) -> None:
        self._wall, self._boot = wall, boot
        self._base = wall() - boot()  # ns: the wall clock's offset from the boot clock, as this clock follows it
        self.since_ms = self.now_ms()  # what this run stored is on this clock from here on

    def now_ms(self) -> int:
        return (self._boot() + self._base) // 1_000_000

    def step_ms(self) -> int:
        """How far the wall clock stepped away from this clock (ms, < 0: back); 0 for less than STEP_MS."""
        step = (self._wall() - self._boot() - self._base) // 1_000_000
        return step if abs(step) >= STEP_MS else 0

    def follow(self, step_ms: int) -> None:
        """Read the wall clock after a step of `step_ms`: call it once the store's times were moved with it."""
        self._base += step_ms * 1_000_000
        self.since_ms += step_ms


@dataclass(frozen=True, slots=True)
class RunStart:
    """The last intent and status stored when this run started: those after them were stored on its clock."""

    intents_after: int
    events_after: int


def run_start(conn: sqlite3.Connection) -> RunStart:
    intents = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM intents").fetchone()[0]
    return RunStart(int(intents), event_log.last_event_seq(conn))


def carry(conn: sqlite3.Connection, step: int, start: RunStart, since: int, upto: int) -> BridgeClock:
    """Move by `step` ms what this run stored on the clock before the step: the created times and deadlines of
    the intents it took in, when any intent last changed and the status times it stored (between `since` and
    `upto`, this run's times on that clock), and the bridge's clock when it was learned in this run. Returns
    the bridge's clock as stored now."""
    conn.execute(
        "UPDATE intents SET created = created + ?1, expires = expires + ?1 WHERE seq > ?2", (step, start.intents_after)
    )
    for states in (PENDING, FINAL):  # each through its partial index (intents_pending, intents_final)
        conn.execute(
            f"UPDATE intents SET updated = updated + ?1 WHERE {state_in(states)} AND updated BETWEEN ?2 AND ?3",
            (step, since, upto),
        )
    conn.execute("UPDATE events SET at = at + ?1 WHERE seq > ?2", (step, start.events_after))
    clock = offline_ops.bridge_clock(conn)
    if clock.learned_at and since <= clock.learned_at <= upto:
        clock = BridgeClock(clock.offset_ms - step, clock.source, clock.learned_at + step)
        event_log.set_meta(conn, CLOCK_KEY, clock.to_json())
    return clock


async def follow_step(clock: LocalClock, store: Store, start: RunStart, on_moved: Callable[[BridgeClock], None]) -> int:
    """Carry a step of the wall clock into the store, then follow it; `on_moved(bridge clock)` after one.
    Returns the step (ms; 0: none)."""
    step = clock.step_ms()
    if not step:
        return 0
    moved = await store.call(lambda conn: carry(conn, step, start, clock.since_ms, clock.now_ms()))
    clock.follow(step)
    on_moved(moved)
    side = "forward" if step > 0 else "back"
    log.warning(
        "this device's clock stepped %s %s: the times stored since the outbox started are moved with it",
        format_age(round(abs(step) / 1000)),
        side,
    )
    return step
