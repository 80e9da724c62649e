"""A bridge node whose provider calls are held per intent: rows claimed ahead of one slot, for tests of what
happens to a row claimed but not started (an operator's cancel, a stopping executor)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.intent_sql import SqlIntents
from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from tests.support.bridge import CountingIntegration, DeviceClient, Harness, email, make_settings, running_bridge
from tests.support.net import until


class GatedIntegration(CountingIntegration):
    """One slot; each call waits until its intent's gate opens (a provider call under way)."""

    concurrency = 1

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, intent_id: str) -> asyncio.Event:
        return self.gates.setdefault(intent_id, asyncio.Event())

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job)
        await self.gate(job.intent_id).wait()
        return Outcome("sent")


def row(intents: SqlIntents, intent_id: str) -> LedgerEntry:
    [entry] = intents.find(intent_id)
    return entry


def state(intents: SqlIntents, intent_id: str) -> EntryState | None:
    return next((entry.state for entry in intents.find(intent_id)), None)


@contextlib.asynccontextmanager
async def sqlite_node(tmp_path: Path, files: dict[str, Path], gated: GatedIntegration) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, files)
    async for harness in running_bridge(settings, files["ca"], {"email.send": gated}):
        yield harness


async def claimed_ahead(
    harness: Harness, gated: GatedIntegration, client: DeviceClient
) -> tuple[SqlIntents, Callable[[], list[str]]]:
    """x1's call under way in the one slot, x2 claimed ahead of it: running in the store, never called."""
    intents = harness.bridge.store.intents
    client.send([email("x1")])
    await until(lambda: [j.intent_id for j in gated.calls] == ["x1"], what="x1's call")
    client.send([email("x2")])
    await until(lambda: state(intents, "x2") is EntryState.RUNNING, what="x2 claimed ahead")
    assert [j.intent_id for j in gated.calls] == ["x1"]
    return intents, lambda: [j.intent_id for j in gated.calls]
