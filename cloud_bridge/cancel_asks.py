"""An operator's cancel of a running row: the holding node's answer (`CancelAsks`), the operator's wait for it.

The store's side is cloud_bridge.cancel_sql. The node hears of an ask from the store's signals
(`on_cancel`: a line of the SQLite store's signals table, PostgreSQL's CANCEL_CHANNEL), reads the asks
made of the rows it holds, and for each asks its executor (on the event loop, where a job starts, so the
two cannot interleave): a row claimed ahead is taken out before it starts and ended `failed`/`cancelled`;
a row whose job runs is answered "started" (its call finishes, its result is recorded as any other). A row
the executor claims with an ask pending is ended so too, unrun. An end the store fails to record leaves the
row running and unheld: once its lease runs out, the claim that takes it again ends it so.

The operator (`wait_answer`, from `operator_api.cancel`) waits up to CANCEL_WAIT seconds for the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from cloud_bridge import cancel_sql
from cloud_bridge.errors import CallUnderWayError, CancelPendingError, LedgerStateError
from cloud_bridge.intent_sql import CANCELLED, SqlIntents
from cloud_bridge.ledger import LedgerEntry, log_context
from cloud_bridge.ledger_states import EntryState, LedgerEvent
from cloud_bridge.own_threads import own_thread

logger = logging.getLogger(__name__)

ALL_DEVICES = "*"
CANCEL_WAIT = 10.0  # how long an operator's cancel of a running row waits for its node's answer (seconds)
CANCEL_LOOK = 0.1  # how often it reads the row meanwhile


class HeldRows(Protocol):
    def unstarted(self, entry: LedgerEntry) -> bool | None: ...


class CancelAsks:
    """A node's answers to cancels asked of the rows its executor holds; see the module docstring."""

    def __init__(
        self, intents: SqlIntents, owner: str, clock: Callable[[], float], *, held: Callable[[], HeldRows | None]
    ) -> None:
        self._intents = intents
        self._owner = owner
        self._clock = clock
        self._held = held  # the node's executor (None before it is made)
        self._tasks: set[asyncio.Task[None]] = set()

    def look(self, device_id: str) -> None:
        """The store's signal: a cancel was asked of a running row of `device_id` ("*": of any device)."""
        self._spawn(self._look(None if device_id == ALL_DEVICES else device_id))

    def claimed(self, entry: LedgerEntry) -> None:
        """The executor claimed `entry` with a cancel asked of it: end it, unrun."""
        self._spawn(self._end(entry))

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name="cancel asks")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _look(self, device_id: str | None) -> None:
        try:
            rows = await own_thread(cancel_sql.asked, self._intents, self._owner, device_id)
        except Exception:
            logger.exception("could not read the cancels asked of running rows")
            return
        for entry in rows:
            executor = self._held()
            waiting = None if executor is None else executor.unstarted(entry)  # None: not held here
            if waiting is True:
                await self._end(entry)
            elif waiting is False:  # its call started
                await self._answer(entry)

    async def _end(self, entry: LedgerEntry) -> None:
        try:
            ended = await own_thread(cancel_sql.end_asked, self._intents, entry, self._clock())
        except Exception:
            logger.exception("could not end %s/%s cancelled; it is ended so when it is claimed again",
                             entry.device_id, entry.intent_id, extra=log_context(entry))  # fmt: skip
            return
        if ended is not None:
            logger.info("%s/%s cancelled before its call", entry.device_id, entry.intent_id,
                        extra=log_context(ended, state=str(ended.state), code=CANCELLED))  # fmt: skip

    async def _answer(self, entry: LedgerEntry) -> None:
        try:
            await own_thread(cancel_sql.answer_started, self._intents, entry)
        except Exception:
            logger.exception("could not answer the cancel asked of %s/%s", entry.device_id, entry.intent_id,
                             extra=log_context(entry))  # fmt: skip


def wait_answer(
    intents: SqlIntents,
    asked: LedgerEntry,
    operator: str,
    now: float,
    *,
    wait: float = CANCEL_WAIT,
    look: float = CANCEL_LOOK,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LedgerEntry:
    """After `operator` asked to cancel the running row `asked`: the row once cancelled (by its node, or
    here if it went back to the queue meanwhile). CallUnderWayError when its call had started (it finishes,
    or finished); CancelPendingError when its node did not answer within `wait` seconds (the ask stays)."""
    ask = cancel_sql.ask_of(asked.attempt, operator)
    deadline = clock() + wait
    entry = asked
    name = f"intent {asked.intent_id} of device {asked.device_id}"
    while True:
        if entry.state is EntryState.QUEUED:  # put back (a retry, a restart) before its node answered
            entry = intents.operate(entry.device_id, entry.intent_id, LedgerEvent.CANCEL, operator, now)
            ask = cancel_sql.ask_of(entry.attempt, operator)
        if entry.state is not EntryState.RUNNING:
            if entry.state is EntryState.FAILED and entry.code == CANCELLED:
                return entry
            if entry.attempt != asked.attempt:
                raise LedgerStateError(f"cannot cancel {name}: it moved on to attempt {entry.attempt}; nothing changed")
            raise CallUnderWayError(f"cannot cancel {name}: its call was under way, and it ended {entry.state}")
        if cancel_sql.answered(entry, ask):
            raise CallUnderWayError(
                f"cannot cancel {name}: its call is under way at node {entry.owner}, it will finish"
                " (its result is recorded and sent as any other)"
            )
        if clock() >= deadline:
            raise CancelPendingError(
                f"cancel of {name} asked; node {entry.owner or '?'} holds it and has not answered in {wait:g} s:"
                " it ends cancelled unless its call has started (see `cloud-bridge intents show`)"
            )
        sleep(look)
        [entry] = intents.find(asked.intent_id, asked.device_id)
