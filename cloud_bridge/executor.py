"""The executor: runs due ledger rows through their integrations, with bounded concurrency and retries.

A row is RUNNING in the ledger (committed) before its provider call; a crash then leaves it RUNNING,
and `start()` puts it back in the queue, so it runs again with the same idempotency key. Providers
that honour the key see it once; towards the others delivery is at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.base import Integration, Job
from cloud_bridge.ledger import EntryState, Ledger, LedgerEntry
from intent_contract.backoff import compute_backoff
from intent_contract.codec import Ack
from intent_contract.names import KINDS

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
_ORPHAN_BATCH = 100


def retry_delay(
    tries: int,
    *,
    max_attempts: int,
    base: float,
    cap: float,
    jitter: float,
    retry_after: float | None = None,
) -> float | None:
    """Seconds until the next try after a transient error on try `tries`, or None to give up.

    Full-jitter backoff, raised to the provider's `retry_after` when that asks for longer.
    """
    if tries >= max_attempts:
        return None
    delay = compute_backoff(tries, base=base, cap=cap, jitter=jitter)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


class Executor:
    """Claims due rows for the kinds it has integrations for and runs them; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        integrations: Mapping[str, Integration],
        *,
        on_final: Callable[[str, Ack], Awaitable[None]],
        max_attempts: int = 8,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        now: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        idle_poll: float = 1.0,
        stop_grace: float = 10.0,
        revoked: Callable[[str], bool] = lambda _device_id: False,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if retry_base <= 0 or retry_cap < retry_base:
            raise ValueError("need 0 < retry_base <= retry_cap")
        self._ledger = ledger
        self._integrations = dict(integrations)
        self._limits = {kind: _concurrency(i) for kind, i in self._integrations.items()}
        # Kinds the schemas allow but nobody executes here: such rows end failed/no_integration.
        self._orphans = [k for k in KINDS if k not in self._integrations]
        self._on_final = on_final
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._now = now
        self._rand = rand
        self._idle_poll = idle_poll
        self._stop_grace = stop_grace
        self._revoked = revoked
        self._running: dict[str, set[asyncio.Task[None]]] = {kind: set() for kind in self._integrations}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def in_flight(self) -> int:
        """Jobs running now."""
        return sum(len(tasks) for tasks in self._running.values())

    async def start(self) -> None:
        """Put rows a crash left running back in the queue, then start claiming."""
        if self._loop_task is not None:
            raise RuntimeError("executor already started")
        await self._ledger.recover(self._now())
        self._stopping = False
        self._loop_task = asyncio.create_task(self._loop(), name="executor")

    def wake(self) -> None:
        """Look for due rows now (call after admitting new rows)."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop claiming; give running jobs `stop_grace` seconds, then cancel them (they resume at start)."""
        self._stopping = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        tasks = {t for tasks in self._running.values() for t in tasks}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._stop_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def run_due(self) -> int:
        """Run every row that is due now to its end or next retry; returns how many jobs ran.

        For tests and one-shot tools; do not call it while the loop started by `start()` runs.
        """
        total = 0
        while True:
            started, _ = await self._fill()
            total += started
            tasks = {t for tasks in self._running.values() for t in tasks}
            if not started and not tasks:
                return total
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                _, idle_kinds = await self._fill()
                # With every slot busy, a finishing job wakes us; only free slots need the next due time
                # (asking on every pass scanned all queued rows, 11% of the bridge's time in a drain).
                delay = await self._idle_delay(idle_kinds) if idle_kinds else self._idle_poll
            except Exception:
                logger.exception("executor could not read the ledger; trying again in %.1fs", self._idle_poll)
                delay = self._idle_poll
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _fill(self) -> tuple[int, list[str]]:
        """Claim due rows up to each integration's free slots and start them.

        Returns how many started, and the kinds that still have free slots (nothing more is due).
        """
        started = 0
        idle_kinds: list[str] = []
        for kind, integration in self._integrations.items():
            free = self._limits[kind] - len(self._running[kind])
            if free <= 0 or self._stopping:
                continue
            claimed = await self._ledger.claim([kind], free, self._now())
            if len(claimed) < free:
                idle_kinds.append(kind)
            for entry in claimed:
                task = asyncio.create_task(self._job(entry, integration), name=f"job {entry.intent_id}")
                self._running[kind].add(task)
                task.add_done_callback(self._running[kind].discard)
                started += 1
        if self._orphans and not self._stopping:
            claimed = await self._ledger.claim(self._orphans, _ORPHAN_BATCH, self._now())
            if len(claimed) < _ORPHAN_BATCH:
                idle_kinds += self._orphans
            for entry in claimed:
                detail = f"no integration for {entry.kind} is configured at the bridge"
                ack = await self._ledger.finish(entry, EntryState.FAILED, "no_integration", detail, self._now(), "")
                await self._notify(entry, ack)
                started += 1
        return started, idle_kinds

    async def _idle_delay(self, kinds: list[str]) -> float:
        """How long to sleep when `kinds` have free slots but nothing due: until the next is due, at most idle_poll."""
        due = await self._ledger.next_due(kinds)
        if due is None:
            return self._idle_poll
        return max(0.0, min(self._idle_poll, due - self._now()))

    # -- one job ----------------------------------------------------------------------------------

    async def _job(self, entry: LedgerEntry, integration: Integration) -> None:
        try:
            ack = await self._execute(entry, integration)
        except Exception:
            # The ledger could not record the result: the row stays running and resumes at restart.
            logger.exception("could not record the result of %s/%s", entry.device_id, entry.intent_id)
            ack = None
        finally:
            self._wakeup.set()  # a slot is free
        if ack is not None:
            await self._notify(entry, ack)

    async def _execute(self, entry: LedgerEntry, integration: Integration) -> Ack | None:
        name = getattr(integration, "name", entry.kind)
        if entry.expired_at(self._now()):
            return await self._finish(entry, EntryState.EXPIRED, "expired", "expired before it ran", name)
        if self._revoked(entry.device_id):
            # Revocation stops the device's queued work too, not only its connection.
            detail = "the device was revoked at the bridge before this ran"
            return await self._finish(entry, EntryState.FAILED, "device_revoked", detail, name)
        job = Job(
            device_id=entry.device_id,
            tenant=entry.tenant,
            intent_id=entry.intent_id,
            kind=entry.kind,
            payload=entry.payload,
            attempt=entry.attempt,
            overrides=entry.overrides,
        )
        try:
            outcome = await integration.execute(job)
        except PermanentError as exc:
            return await self._finish(entry, EntryState.FAILED, exc.code, exc.detail, name)
        except TransientError as exc:
            return await self._retry(entry, exc.code, exc.detail, exc.retry_after, name)
        except Exception as exc:  # noqa: BLE001 - any other failure is retried, as the brief asks
            # Not our error type: its message may quote a URL or a token, so only its type is kept.
            logger.warning(
                "integration %s raised %s on %s/%s (try %d)",
                name,
                type(exc).__name__,
                entry.device_id,
                entry.intent_id,
                entry.tries,
            )
            detail = f"the {name} integration raised {type(exc).__name__}"
            return await self._retry(entry, "integration_error", detail, None, name)
        return await self._finish(entry, EntryState.DELIVERED, "", outcome.detail, name)

    async def _retry(
        self, entry: LedgerEntry, code: str, detail: str, retry_after: float | None, name: str
    ) -> Ack | None:
        delay = retry_delay(
            entry.tries,
            max_attempts=self._max_attempts,
            base=self._retry_base,
            cap=self._retry_cap,
            jitter=self._rand(),
            retry_after=retry_after,
        )
        if delay is None:
            return await self._finish(
                entry, EntryState.FAILED, code, f"{detail} (gave up after {entry.tries} tries)", name
            )
        now = self._now()
        if entry.expired_at(now + delay):
            return await self._finish(entry, EntryState.EXPIRED, "expired", f"expires before its retry: {detail}", name)
        await self._ledger.reschedule(entry, now + delay, code, detail, now)
        logger.info("%s/%s: %s; retry in %.1fs", entry.device_id, entry.intent_id, code, delay)
        return None

    async def _finish(self, entry: LedgerEntry, state: EntryState, code: str, detail: str, name: str) -> Ack:
        return await self._ledger.finish(entry, state, code, detail, self._now(), name)

    async def _notify(self, entry: LedgerEntry, ack: Ack) -> None:
        try:
            await self._on_final(entry.device_id, ack)
        except Exception:
            # The result is in the ledger and goes out again when the device resubscribes.
            logger.exception("on_final failed for %s/%s", entry.device_id, entry.intent_id)


def _concurrency(integration: Integration) -> int:
    value = getattr(integration, "concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"integration concurrency must be a positive int, not {value!r}")
    return value
