"""Finishes that wait together, recorded by one store operation (both backends; bench/findings.md F25).

`Ledger.finish` records one job's final state. In a drain, jobs end a few at a time and their finishes
wait for the same commit anyway; recorded one operation each, they were the largest part of the
ledger's work (on SQLite an operation of five statements, on PostgreSQL of five round trips). Here the
first finish starts one store operation and the others join it until the operation takes them, on
whatever runs it (SQLite's writer thread, or PostgreSQL's group on the event loop). The store writes
what it took in bulk and returns one ack per finish, in order. If the operation fails, every finish in
it gets the error, as from a call of its own: the rows stay running and resume as after a crash.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import FINISH, EntryState
from intent_contract.codec import Ack, AckState


@dataclass(frozen=True, slots=True)
class Finish:
    """One job's final state, as `Ledger.finish` takes it (`detail` already clipped)."""

    entry: LedgerEntry
    state: EntryState
    code: str
    detail: str
    now: float
    integration: str
    seconds: float | None

    def ack(self) -> Ack:
        """The ack of the row once this finish is recorded."""
        entry = self.entry
        return Ack(entry.intent_id, AckState(str(self.state)), self.code, self.detail, int(self.now * 1000),
                   entry.app, entry.attempt)  # fmt: skip


def final_state(state: EntryState) -> EntryState:
    """`state` if a job may end in it; a ValueError otherwise (before anything is queued)."""
    if state not in FINISH:
        raise ValueError(f"finish needs a final state, not {state}")
    return state


# One store operation: it calls `take()` when it runs and returns an ack per finish taken, in order.
Operation = Callable[[Callable[[], list[Finish]]], Awaitable[list[Ack]]]


class JoinedFinishes:
    """Finishes handed to one store operation at a time; see the module's docstring."""

    def __init__(self, operation: Operation) -> None:
        self._operation = operation
        self._waiting: list[tuple[Finish, asyncio.Future[Ack]]] = []  # added on the loop, taken anywhere
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def finish(self, finish: Finish) -> Ack:
        done: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        with self._lock:
            first = not self._waiting
            self._waiting.append((finish, done))
        if first:  # the others join it until the operation takes them
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await done

    async def _run(self) -> None:
        taken: list[tuple[Finish, asyncio.Future[Ack]]] = []

        def take() -> list[Finish]:
            with self._lock:
                taken.extend(self._waiting)
                self._waiting.clear()
            return [finish for finish, _ in taken]

        try:
            acks = await self._operation(take)
        except Exception as exc:  # noqa: BLE001 - each caller gets it, as from its own call
            if not taken:  # failed before it ran (the store closed, its transaction never began)
                take()
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
        else:
            for (_, done), ack in zip(taken, acks, strict=True):
                if not done.done():  # the caller gave up waiting; the result is recorded all the same
                    done.set_result(ack)
