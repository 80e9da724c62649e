"""Intake: publishes in, committed decisions out, whatever the transport (embedded or attach).

`submit` decides at once (pure: `admit`) and returns a future that resolves once what the publish
became is on disk; transports acknowledge after it. One task commits what waits, a batch per store
call, so a burst of publishes costs one pass over the queue totals and one savepoint.

It never answers for something it did not store: while the disk is full, or the queue is at its
limits, it holds the publish (and with it the acknowledgement) until it can store it. That is
backpressure: MQTT 3.1.1 has no negative acknowledgement, and an app whose PUBACK is withheld keeps
the message and stops sending once its in-flight window is full (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge_outbox import ops, qos2_taken
from edge_outbox.errors import StorageError
from edge_outbox.intake_rules import REPLAY_TOPIC, TOPIC_ROOT, Admitted, Refused, admit, split_topic
from edge_outbox.ops import IntakeResult, Outcome, QueueLimits
from edge_outbox.states import State
from edge_outbox.store import Store
from intent_contract.backoff import compute_backoff
from intent_contract.ids import IdGenerator
from intent_contract.logs import LogThrottles

log = logging.getLogger(__name__)

ROOM_POLL_S = 0.5
REFUSAL_LOG_INTERVAL = 10.0  # seconds between an app's "rejected input" lines
REFUSAL_LOG_LINES = 10  # "rejected input" lines (and "duplicate intent" lines) per interval from all apps together
REFUSAL_LOG_APPS = 1024  # apps whose refusals are throttled at once; those holding nothing back forgotten beyond
MAX_BATCH = 2000
# Payload bytes of publishes taken and not yet stored, from every connection: past it the endpoint reads no more
# (`room_to_read`). A connection stops reading at 1,000 unanswered publishes of its own, but one dropped for that
# (its keepalive unread) left them waiting, and a QoS 0 app that came back added 1,000 more each time: 12 MB per
# reconnection with 10 KB intents on a full queue, for as long as it lasted.
MAX_WAITING_BYTES = 64 << 20
# What a committed publish can come to: stored accepted, refused (rejected), expired on arrival, a duplicate.
INTAKE_OUTCOMES = (State.ACCEPTED.value, State.REJECTED.value, State.EXPIRED.value, "duplicate")


@dataclass(slots=True)
class IntakeHealth:
    """What `edge-outbox status` shows of intake: held publishes and why."""

    held_since: float | None = None  # when storing stopped (s, the outbox's clock), None while it works
    reason: str = ""
    held: int = 0  # publishes waiting right now
    held_total: int = 0  # publishes that had to wait, since start
    episodes: int = 0
    episode_held: int = 0  # publishes that had to wait in the current (or last) episode


@dataclass(slots=True)
class _Waiting:
    decision: Admitted | Refused
    topic: str
    future: asyncio.Future[IntakeResult]
    size: int = 0  # of the payload as taken, counted in `Intake.waiting_bytes`
    held: bool = False
    taken: qos2_taken.Key | None = None  # a persistent session's QoS 2 packet id, committed with the intent


class Intake:
    """Validates, commits and answers each intent; `run()` must be running for anything to commit."""

    def __init__(self, store: Store, limits: QueueLimits, clock_ms: Callable[[], int], ids: IdGenerator) -> None:
        self._store = store
        self._limits = limits
        self._clock_ms = clock_ms
        self._ids = ids
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.health = IntakeHealth()
        # By kind of line, then app. App names are the publisher's to choose: a fresh one per publish was a fresh
        # throttle each, and a line each, so the lines of all apps together are bounded too.
        self._app_logs = {
            kind: LogThrottles(REFUSAL_LOG_INTERVAL, lines=REFUSAL_LOG_LINES, keys=REFUSAL_LOG_APPS)
            for kind in ("rejected", "duplicate")
        }
        # Committed publishes by outcome (a state, or "duplicate"), each from 0: a series that appears at its
        # first event is missed by Prometheus's rate() and increase().
        self.outcomes: dict[str, int] = dict.fromkeys(INTAKE_OUTCOMES, 0)
        self.max_waiting_bytes = MAX_WAITING_BYTES
        self.waiting_bytes = 0  # payload bytes of the publishes in `_waiting`
        self._readable = asyncio.Event()
        self._readable.set()
        self.reads_paused = 0  # times a reader waited for `room_to_read` (for tests)

    @staticmethod
    def is_intake(topic: str) -> bool:
        """Everything under outbox/ except the status topics the outbox publishes and replay requests."""
        if not topic.startswith(TOPIC_ROOT + "/"):
            return False
        parts = topic.split("/")
        if len(parts) == 4 and parts[2] == "status":
            return False
        return not (len(parts) == 3 and parts[2] == REPLAY_TOPIC)

    @staticmethod
    def replay_app(topic: str) -> str | None:
        parts = split_topic(topic)
        return parts[0] if parts is not None and parts[1] == REPLAY_TOPIC else None

    def room(self) -> None:
        """Something left the queue: held publishes may try again."""
        self._room.set()

    def submit(
        self,
        topic: str,
        raw: bytes,
        *,
        principal: str | None = None,
        expiry_s: int | None = None,
        size: int | None = None,
        taken: qos2_taken.Key | None = None,
    ) -> asyncio.Future[IntakeResult]:
        """Decide what this publish becomes; the future resolves once that is committed.

        `principal` is the authenticated app, when apps log in; `expiry_s` an MQTT 5 message expiry; `size` the
        payload's full size when `raw` is only its head (attach mode drops the rest of one over the limit unread);
        `taken` the (client id, packet id) of a QoS 2 publish of a persistent session, committed with it.
        """
        now = self._clock_ms()
        decision = admit(topic, raw, now, self._ids.new, expiry_s=expiry_s, size=size)
        if principal is not None and decision.app != principal:
            # Answer in the publisher's own namespace: a client may not write into another app's outbox. On the id
            # its payload carries, where it waits (one was made up for every such refusal: it heard nothing).
            decision = Refused(
                decision.id,
                principal,
                decision.kind,
                "not_authorized",
                f"app {principal!r} may only publish to outbox/{principal}/{{kind}}",
                raw[:256],
                len(raw) if size is None else size,
                now,
            )
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(decision, topic, future, len(raw), taken=taken)
        self._waiting.append(waiting)
        if self.health.held_since is not None:  # it waits behind the held ones: counted now, not when its batch is
            self._hold([waiting], self.health.reason)  # tried (`status` showed at most a batch, 2,000, held)
        self.waiting_bytes += len(raw)
        if self.waiting_bytes > self.max_waiting_bytes:
            self._readable.clear()
        self._wake.set()
        return future

    async def receive(self, topic: str, raw: bytes, *, principal: str | None = None) -> IntakeResult:
        """`submit` and wait for the commit."""
        return await self.submit(topic, raw, principal=principal)

    async def run(self) -> None:
        """Commit what waits, a batch at a time, in arrival order; hold what cannot be stored yet."""
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._room.wait()
                batch = [self._waiting[i] for i in range(min(len(self._waiting), MAX_BATCH))]
                try:
                    results = await self._store.call(
                        _commit, [w.decision for w in batch], [w.taken for w in batch], self._limits, self._clock_ms()
                    )
                except StorageError as exc:
                    failures += 1
                    self._hold(batch, f"cannot store: {exc}")
                    await asyncio.sleep(compute_backoff(failures, base=0.1, cap=5.0, jitter=random.random()))
                    continue
                failures = 0
                held: list[_Waiting] = []
                for waiting, result in zip(batch, results, strict=True):
                    if result.outcome is Outcome.QUEUE_FULL:
                        held.append(waiting)
                    else:
                        self._done(waiting, result)
                for _ in batch:
                    self._waiting.popleft()
                if held:
                    self._waiting.extendleft(reversed(held))
                    self._hold(held, results[batch.index(held[0])].detail)
                    self._room.clear()
                    asyncio.get_running_loop().call_later(ROOM_POLL_S, self._room.set)
                elif self.health.held_since is not None and not any(w.held for w in self._waiting):
                    self._resumed()

    async def room_to_read(self) -> None:
        """Return once what waits to be stored is within `max_waiting_bytes` (a reader takes no more till then)."""
        if not self._readable.is_set():
            self.reads_paused += 1
            await self._readable.wait()

    def _done(self, waiting: _Waiting, result: IntakeResult) -> None:
        self.waiting_bytes -= waiting.size
        if self.waiting_bytes <= self.max_waiting_bytes:
            self._readable.set()
        if waiting.held:
            self.health.held -= 1
        if not waiting.future.done():
            waiting.future.set_result(result)
        row = result.row
        if row is None:
            return
        duplicate = result.outcome is Outcome.DUPLICATE
        outcome = "duplicate" if duplicate else row.state.value
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if duplicate or row.state is State.REJECTED:
            context: dict[str, object] = {
                "app": row.app, "intent_id": row.id, "state": row.state.value, "code": row.code or None
            }  # fmt: skip
            # A line per app per REFUSAL_LOG_INTERVAL, of each kind: an app publishing bad intents in a loop wrote a
            # line each, on hardware whose disk is small (every refusal is stored, counted and told to the app), and
            # one publishing the same id again (its retries, or a loop: nothing is stored) wrote one each too.
            throttles = self._app_logs["duplicate" if duplicate else "rejected"]
            not_logged = throttles.allow(row.app, time.monotonic())
            if not_logged is None:
                return
            others = throttles.take_others()
            more = f" ({not_logged} more from this app since the last line)" if not_logged else ""
            if others:
                more += f" ({others} more from all apps, over {REFUSAL_LOG_LINES} lines in {REFUSAL_LOG_INTERVAL:g} s)"
            context["not_logged"] = not_logged + others
            if duplicate:
                log.info("duplicate intent: already stored%s", more, extra=context)
            else:
                log.warning("rejected input on %s: %s%s", waiting.topic, row.detail, more, extra=context)

    def _hold(self, batch: list[_Waiting], reason: str) -> None:
        health = self.health
        if health.held_since is None:
            health.held_since = self._clock_ms() / 1000
            health.reason = reason
            health.episodes += 1
            health.episode_held = 0
            log.error("intake paused, acknowledgements held until intents can be stored: %s", reason)
        for waiting in batch:
            if not waiting.held:
                waiting.held = True
                health.held += 1
                health.held_total += 1
                health.episode_held += 1

    def _resumed(self) -> None:
        health = self.health
        assert health.held_since is not None
        log.warning(
            "intake resumed after %.1f s; %d publishes were held and are now stored",
            self._clock_ms() / 1000 - health.held_since,
            health.episode_held,
        )
        health.held_since = None
        health.reason = ""


def _commit(
    conn: sqlite3.Connection,
    items: list[Admitted | Refused],
    taken: list[qos2_taken.Key | None],
    limits: QueueLimits,
    now: int,
) -> list[IntakeResult]:
    """`ops.commit_intakes`, and the QoS 2 packet ids of what it stored (a duplicate too) in the same operation."""
    results = ops.commit_intakes(conn, items, limits, now)
    keys = [key for key, result in zip(taken, results, strict=True) if key and result.outcome is not Outcome.QUEUE_FULL]
    if keys:
        qos2_taken.take(conn, keys)
    return results
