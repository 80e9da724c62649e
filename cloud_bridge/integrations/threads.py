"""Blocking calls of an integration (Apprise's notifications, name lookups) in daemon threads of its own.

Not the event loop's default pool: device authentication, enrollment and admission run there, and a
provider or a name server that answered slowly held its threads (six on two cores): no device could
connect meanwhile. A call given up on (its caller cancelled, a deadline passed) keeps its thread and
its place among the `size` until it returns; nothing can stop a thread. Daemon threads, so that one
still blocked never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class BoundedThreads:
    """At most `size` daemon threads running calls at once; a call waits for a free one."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._free = asyncio.Semaphore(size)
        self._name = name

    async def run(self, call: Callable[[], T]) -> T:
        """`call()`'s result (or exception) from a thread of its own; cancelling stops the wait, not the call."""
        await self._free.acquire()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def ended(result: tuple[T, None] | tuple[None, BaseException]) -> None:
            self._free.release()
            if done.done():  # the caller gave up waiting
                return
            value, error = result
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)  # type: ignore[arg-type]

        def work() -> None:
            result: tuple[T, None] | tuple[None, BaseException]
            try:
                result = (call(), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as from a call of its own
                result = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(ended, result)

        try:
            threading.Thread(target=work, name=self._name, daemon=True).start()
        except BaseException:
            self._free.release()
            raise
        return await done
