"""One claimed ledger row's run: before the call, the call, its verdict recorded, the result told.

The executor (cloud_bridge/executor.py) claims rows and holds a slot for each while `JobRun.run` runs it:
`outcome.before_run` may end it first (past its deadline, its device revoked), else the integration is
called and `outcome.after_run` decides (delivered, failed, expired, or back to the queue for a retry);
the ledger records it, and a final result goes to the device (`on_final`). A result the store fails to
record is tried again for as long as the store fails (the job keeps its slot, the executor its lease); one
never recorded (the node stopped meanwhile) leaves the row running: it resumes at restart, or another
node claims it when its lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.base import Integration, Job
from cloud_bridge.ledger import Ledger, LedgerEntry, log_context
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.outcome import CallResult, Permanent, RetryPolicy, Returned, Transient, after_run, before_run
from intent_contract.codec import Ack

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A result the store failed to record is tried again until it is recorded, waiting FINISH_RETRY_FIRST seconds,
# then twice as long each time up to FINISH_RETRY_CAP, under the lease the executor keeps renewing.
FINISH_RETRY_FIRST = 0.05
FINISH_RETRY_CAP = 2.0


class Observe(Protocol):
    """Told of every execution's end: kind, outcome (delivered, failed, expired, retried), code, provider time."""

    def __call__(self, kind: str, outcome: str, code: str, seconds: float | None) -> None: ...


def ignore(kind: str, outcome: str, code: str, seconds: float | None) -> None:
    return None


class JobRun:
    """Runs claimed rows one call each (the executor bounds how many at once); see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        on_final: Callable[[str, Ack], Awaitable[None]],
        retry_policy: RetryPolicy,
        now: Callable[[], float],
        rand: Callable[[], float],
        revoked: Callable[[str], bool],
        observe: Observe,
        slowed: Callable[[LedgerEntry, float], None] = lambda _entry, _until: None,
    ) -> None:
        self._ledger = ledger
        self._on_final = on_final
        self._retry_policy = retry_policy
        self._now = now
        self._rand = rand
        self._revoked = revoked
        self._observe = observe
        self._slowed = slowed  # told of a provider's rate limit: no call to it before that time (provider_pause.py)

    async def run(self, entry: LedgerEntry, integration: Integration) -> None:
        """Run one claimed row through `integration`: its result recorded, then told to its device."""
        try:
            ack = await self._execute(entry, integration)
        except Exception:
            # The ledger could not record the result: the row stays running and resumes at restart.
            logger.exception("could not record the result of %s/%s", entry.device_id, entry.intent_id,
                             extra=log_context(entry))  # fmt: skip
            ack = None
        if ack is not None:
            await self._notify(entry, ack)

    async def end_unrun(self, entry: LedgerEntry, code: str, detail: str) -> None:
        """End a row failed without a call (no integration serves its kind) and tell its device."""
        await self._notify(entry, await self._finish(entry, EntryState.FAILED, code, detail, ""))

    async def _execute(self, entry: LedgerEntry, integration: Integration) -> Ack | None:
        name = getattr(integration, "name", entry.kind)
        revoked = entry.revoked or self._revoked(entry.device_id)
        stop = before_run(entry, now=self._now(), revoked=revoked, max_attempts=self._retry_policy.max_attempts)
        if stop is not None:
            ack = await self._finish(entry, stop.state, stop.code, stop.detail, name)
            if stop.settled:  # a revoked device never confirms: left unconfirmed, no purge ever deleted it
                await self._ledger.confirm(entry.device_id, [entry.intent_id], entry.attempt)
            return ack
        job = Job(
            device_id=entry.device_id,
            tenant=entry.tenant,
            intent_id=entry.intent_id,
            kind=entry.kind,
            payload=entry.payload,
            attempt=entry.attempt,
            overrides=entry.overrides,
        )
        started = time.perf_counter()
        result: CallResult
        try:
            outcome = await integration.execute(job)
        except PermanentError as exc:
            result = Permanent(exc.code, exc.detail)
        except TransientError as exc:
            result = Transient(exc.code, exc.detail, exc.retry_after)
        except Exception as exc:  # noqa: BLE001 - any other failure is retried, as the brief asks
            # Not our error type: its message may quote a URL or a token, so only its type is kept.
            logger.warning(
                "integration %s raised %s on %s/%s (try %d)", name, type(exc).__name__, entry.device_id,
                entry.intent_id, entry.tries, extra=log_context(entry, code="integration_error"),
            )  # fmt: skip
            result = Transient("integration_error", f"the {name} integration raised {type(exc).__name__}")
        else:
            result = Returned(outcome.detail)
        now = self._now()
        verdict = after_run(entry, result, now=now, policy=self._retry_policy, jitter=self._rand())
        if verdict.retry_at is None:
            ack = await self._finish(entry, verdict.state, verdict.code, verdict.detail, name, started)
            if self._revoked(entry.device_id):  # revoked during the call: no edge will confirm it (see above)
                await self._ledger.confirm(entry.device_id, [entry.intent_id], entry.attempt)
            return ack
        retry_at = verdict.retry_at
        if not verdict.counted:
            self._slowed(entry, retry_at)
        await self._recorded(
            entry,
            lambda: self._ledger.reschedule(
                entry, retry_at, verdict.code, verdict.detail, self._now(), counted=verdict.counted
            ),
        )
        self._observe(entry.kind, "retried", verdict.code, time.perf_counter() - started)
        logger.info("%s/%s: %s; retry in %.1fs", entry.device_id, entry.intent_id, verdict.code, verdict.retry_at - now,
                    extra=log_context(entry, code=verdict.code, state="queued"))  # fmt: skip
        return None

    async def _finish(
        self, entry: LedgerEntry, state: EntryState, code: str, detail: str, name: str, started: float | None = None
    ) -> Ack:
        seconds = None if started is None else time.perf_counter() - started  # the provider call's time
        ack = await self._record(entry, state, code, detail, name, seconds)
        self._observe(entry.kind, str(state), code, seconds)
        if state is not EntryState.DELIVERED:
            logger.info("%s/%s ended %s: %s", entry.device_id, entry.intent_id, state, code,
                        extra=log_context(entry, state=str(state), code=code))  # fmt: skip
        return ack

    async def _record(
        self, entry: LedgerEntry, state: EntryState, code: str, detail: str, name: str, seconds: float | None
    ) -> Ack:
        """`Ledger.finish`, tried again for as long as the store fails: a result not recorded leaves the row
        running, and once its lease runs out it runs again. One failed transaction (a connection the database
        ended: a failover, a pooler restart, pg_terminate_backend) sent an email twice; so did a full disk that
        outlasted the 10 tries (about 9 s) this used to make. A finish whose commit went through unanswered is
        found recorded by the next try (the row is no longer held). Logged when it first fails and when it is
        recorded, not at every try."""
        return await self._recorded(
            entry, lambda: self._ledger.finish(entry, state, code, detail, self._now(), name, seconds=seconds)
        )

    async def _recorded(self, entry: LedgerEntry, write: Callable[[], Awaitable[T]]) -> T:
        """`write` (a finish, or a retry's reschedule), tried again for as long as the store fails (see `_record`).

        A retry the store refused was dropped before December 2026: the row stayed running until its lease ran
        out and was claimed again at once, the provider's Retry-After lost and the try audited `lease_expired`."""
        delay = FINISH_RETRY_FIRST
        failed = 0
        while True:
            try:
                done = await write()
            except TransientError as exc:
                if not failed:
                    logger.warning("%s/%s: result not recorded (%s); trying again until the store takes it",
                                   entry.device_id, entry.intent_id, exc.code,
                                   extra=log_context(entry, code=exc.code))  # fmt: skip
                failed += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, FINISH_RETRY_CAP)
                continue
            if failed:
                logger.warning("%s/%s: result recorded after %d failed tries", entry.device_id, entry.intent_id,
                               failed, extra=log_context(entry, code="recorded"))  # fmt: skip
            return done

    async def _notify(self, entry: LedgerEntry, ack: Ack) -> None:
        try:
            await self._on_final(entry.device_id, ack)
        except Exception:
            # The result is in the ledger and goes out again when the device resubscribes.
            logger.exception("on_final failed for %s/%s", entry.device_id, entry.intent_id, extra=log_context(entry))
