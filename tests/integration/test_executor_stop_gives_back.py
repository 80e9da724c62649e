"""A stopping executor puts the rows it claimed ahead and never started back in the queue as they were
(`Ledger.unclaim`): they ran once, as their first try, on a SQLite node's restart and on another
PostgreSQL node, rather than as a second try "resumed" that "may have reached the provider"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloud_bridge.audit import AuditEvent
from cloud_bridge.intent_sql import SqlIntents
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, node, until
from tests.support.held_calls import GatedIntegration, claimed_ahead, row, sqlite_node, state
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


async def _stop_with_x1_running(harness: Harness, gated: GatedIntegration, intents: SqlIntents) -> None:
    """Stop the executor while x1's call is under way and x2 waits claimed ahead: x2 goes back at once."""
    executor = harness.bridge.executor
    assert executor is not None
    stopping = asyncio.create_task(executor.stop())
    await until(lambda: state(intents, "x2") is EntryState.QUEUED, what="x2 back in the queue")
    x2 = row(intents, "x2")
    assert (x2.tries, x2.owner, x2.code) == (0, "", "")
    gated.gate("x1").set()
    await stopping


async def test_a_sqlite_nodes_restart_runs_a_row_it_had_claimed_ahead_as_its_first_try(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    gated = GatedIntegration()
    async with sqlite_node(tmp_path, server_cert_files, gated) as harness:
        creds = await harness.enroll()
        client = await harness.connect(creds)
        try:
            intents, calls = await claimed_ahead(harness, gated, client)
            await _stop_with_x1_running(harness, gated, intents)
            gated.gate("x2").set()
            assert harness.bridge.executor is not None
            await harness.bridge.executor.start()
            await until(lambda: state(intents, "x2") is EntryState.DELIVERED, what="x2 delivered")
            assert row(intents, "x2").tries == 1
            assert [r.event for r in intents.history(creds.device_id, "x2")] == [AuditEvent.ACCEPT, AuditEvent.DELIVER]
            assert calls() == ["x1", "x2"]
        finally:
            await client.stop()


async def test_rows_a_stopping_postgresql_node_claimed_ahead_run_on_another_node_at_once(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    gated, other = GatedIntegration(), CountingIntegration()
    async with node(tmp_path, server_cert_files, pg_url, "node-a", gated) as a:
        creds = await a.enroll()
        client = await a.connect(creds)
        try:
            intents, _ = await claimed_ahead(a, gated, client)
            await _stop_with_x1_running(a, gated, intents)
            async with node(tmp_path, server_cert_files, pg_url, "node-b", other):
                await until(lambda: state(intents, "x2") is EntryState.DELIVERED, what="x2 delivered on node B")
            x2 = row(intents, "x2")
            assert (x2.tries, [j.intent_id for j in other.calls]) == (1, ["x2"])
            assert [r.event for r in intents.history(creds.device_id, "x2")] == [AuditEvent.ACCEPT, AuditEvent.DELIVER]
        finally:
            await client.stop()
