"""Intake: one publish in, one committed decision out, whatever the transport (embedded or attach)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from edge_outbox import ops
from edge_outbox.errors import StorageError
from edge_outbox.intake_rules import Admitted, Refused, admit
from edge_outbox.ops import IntakeResult, Outcome, QueueLimits
from edge_outbox.states import State
from edge_outbox.status import StatusMessage, StatusPublisher
from edge_outbox.store import Store
from intent_contract.backoff import compute_backoff
from intent_contract.ids import IdGenerator

log = logging.getLogger(__name__)


class Intake:
    """Validates, commits and answers each intent; `receive` returns only after the commit."""

    def __init__(
        self, store: Store, status: StatusPublisher, limits: QueueLimits, clock_ms: Callable[[], int], ids: IdGenerator
    ) -> None:
        self._store = store
        self._status = status
        self._limits = limits
        self._clock_ms = clock_ms
        self._ids = ids

    async def receive(self, topic: str, raw: bytes, *, principal: str | None = None) -> IntakeResult:
        """Commit what this publish becomes; `principal` is the authenticated app, when apps log in.

        While the disk is full (or SQLite cannot commit for another reason) this keeps retrying with
        backoff and does not return: the publisher gets no acknowledgement until the intent is on disk.
        """
        now = self._clock_ms()
        decision = admit(topic, raw, now, self._ids.new)
        if principal is not None and decision.app != principal:
            # Answer in the publisher's own namespace: a client may not write into another app's outbox.
            decision = Refused(
                self._ids.new(),
                principal,
                decision.kind,
                "not_authorized",
                f"app {principal!r} may only publish to outbox/{principal}/{{kind}}",
                raw[:256],
                len(raw),
                now,
            )
        result = await self._commit(decision, now)
        if result.outcome is Outcome.DUPLICATE and result.row is not None:
            row = result.row
            log.info("duplicate intent %s from app %s: already %s", row.id, row.app, row.state)
            self._status.send(StatusMessage(row.id, row.app, row.kind, row.state, row.code, row.detail, row.updated))
        elif result.outcome is Outcome.QUEUE_FULL:
            log.warning("queue full: refused intent %s from app %s: %s", decision.id, decision.app, result.detail)
            self._status.send(
                StatusMessage(
                    decision.id, decision.app, decision.kind, State.REJECTED, "queue_full", result.detail, now
                )
            )
        elif result.row is not None and result.row.state is State.REJECTED:
            log.warning("rejected input on %s as %s: %s (%s)", topic, result.row.id, result.row.code, result.row.detail)
        return result

    async def _commit(self, decision: Admitted | Refused, now: int) -> IntakeResult:
        failures = 0
        while True:
            try:
                result = await self._store.call(ops.commit_intake, decision, self._limits, now)
            except StorageError as exc:
                failures += 1
                if failures == 1:
                    log.error("cannot store intents, holding acknowledgements until it can: %s", exc)
                await asyncio.sleep(compute_backoff(failures, base=0.1, cap=5.0, jitter=random.random()))
                continue
            if failures:
                log.warning("storing intents again after %d failed attempts", failures)
            return result
