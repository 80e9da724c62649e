"""An operator's cancel of a running row (cloud_bridge.cancel_asks): a row the executor claimed ahead of its
call ends cancelled, unrun; a row whose call started is answered so and finishes; a cancel racing the
call's start ends in exactly one of the two. On a SQLite node (the CLI in its own process) and on two
PostgreSQL nodes (the row held on node A, the cancel made through node B's store)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from cloud_bridge import cancel_asks, operator_api
from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import CallUnderWayError, CancelPendingError
from cloud_bridge.intent_sql import SqlIntents
from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from tests.support.bridge import CountingIntegration, DeviceClient, node, until
from tests.support.held_calls import GatedIntegration, claimed_ahead, row, sqlite_node
from tests.support.stores import admit, opened, pg_url

__all__ = ["pg_url"]  # fixtures


def _heard(client: DeviceClient, intent_id: str) -> list[tuple[AckState, str, str]]:
    with client._lock:  # the test client's own lock over what it received
        return [(a.state, a.code, a.detail) for a in client.acks if a.id == intent_id]


async def _cli_cancel(data_dir: Path, device_id: str, intent_id: str) -> tuple[int, str, str]:
    """`cloud-bridge intents cancel` in its own process, as an operator runs it beside a running node."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud_bridge", "intents", "cancel", device_id, intent_id, "--operator", "alice",
        "--data-dir", str(data_dir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_sqlite_cancel_ends_a_row_claimed_ahead_unrun_and_answers_a_started_call_truthfully(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """The CLI answered "cannot cancel an intent that is running" for x2, claimed ahead (running in the
    store) with no call under way, so an operator could cancel nothing next in line."""
    gated = GatedIntegration()
    async with sqlite_node(tmp_path, server_cert_files, gated) as harness:
        data_dir = harness.settings.data_dir
        creds = await harness.enroll()
        client = await harness.connect(creds)
        try:
            intents, calls = await claimed_ahead(harness, gated, client)
            code, out, err = await _cli_cancel(data_dir, creds.device_id, "x2")
            assert (code, out, err) == (0, f"cancelled {creds.device_id}/x2: now failed (attempt 1)\n", "")
            await until(lambda: len(_heard(client, "x2")) == 2, what="x2's result at the device")
            assert _heard(client, "x2")[1] == (AckState.FAILED, "cancelled", "cancelled by operator alice")
            x2 = row(intents, "x2")
            assert (x2.tries, x2.owner) == (0, "")  # its claim's try never started
            assert [r.event for r in intents.history(creds.device_id, "x2")] == [AuditEvent.ACCEPT, AuditEvent.CANCEL]

            code, out, err = await _cli_cancel(data_dir, creds.device_id, "x1")
            assert code == 1 and out == ""
            assert "cannot cancel intent x1" in err and "its call is under way at node node-a, it will finish" in err
            gated.gate("x1").set()
            await until(lambda: _heard(client, "x1")[-1][0] is AckState.DELIVERED, what="x1 delivered")
            assert calls() == ["x1"]  # x2 never reached the provider, x1 once
        finally:
            await client.stop()


async def test_a_cancel_racing_the_calls_start_ends_in_the_call_when_the_call_starts_first(
    tmp_path: Path, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node hears the ask of x2 while x2 waits claimed ahead, but a slot frees and x2's call starts before
    the node reads the ask: it answers that the call started, x2 runs once and its result is kept."""
    reading, go = threading.Event(), threading.Event()
    read = cancel_asks.cancel_sql.asked

    def held_read(*args: object) -> list[LedgerEntry]:
        reading.set()
        go.wait(30)
        return read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cancel_asks.cancel_sql, "asked", held_read)
    gated = GatedIntegration()
    async with sqlite_node(tmp_path, server_cert_files, gated) as harness:
        data_dir = harness.settings.data_dir
        creds = await harness.enroll()
        client = await harness.connect(creds)
        try:
            _, calls = await claimed_ahead(harness, gated, client)
            cancel = asyncio.create_task(_cli_cancel(data_dir, creds.device_id, "x2"))
            await until(reading.is_set, what="the node reading the ask")
            gated.gate("x1").set()
            await until(lambda: calls() == ["x1", "x2"], what="x2's call, started in the freed slot")
            go.set()
            code, _, err = await cancel
            assert code == 1 and "cannot cancel intent x2" in err and "its call is under way at node node-a" in err
            gated.gate("x2").set()
            await until(lambda: [s for s, _, _ in _heard(client, "x2")][-1:] == [AckState.DELIVERED], what="x2")
            assert calls() == ["x1", "x2"]
        finally:
            go.set()
            await client.stop()


async def test_a_cancel_made_on_node_b_ends_a_row_node_aclaimed_ahead(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    gated, idle = GatedIntegration(), CountingIntegration()
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", gated) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", idle) as b,
    ):
        assert b.bridge.executor is not None
        await b.bridge.executor.stop()  # node A runs everything
        creds = await a.enroll()
        client = await a.connect(creds)
        try:
            _, calls = await claimed_ahead(a, gated, client)
            on_b = b.bridge.store.intents
            assert row(on_b, "x2").owner == "node-a"
            done = await asyncio.to_thread(operator_api.cancel, on_b, ["x2"], "bob", time.time())
            assert (done.intent.state, done.intent.code) == ("failed", "cancelled")
            await until(lambda: len(_heard(client, "x2")) == 2, what="x2's result at the device")
            assert _heard(client, "x2")[1] == (AckState.FAILED, "cancelled", "cancelled by operator bob")
            with pytest.raises(CallUnderWayError, match="its call is under way at node node-a, it will finish"):
                await asyncio.to_thread(operator_api.cancel, on_b, ["x1"], "bob", time.time())
            gated.gate("x1").set()
            await until(lambda: _heard(client, "x1")[-1][0] is AckState.DELIVERED, what="x1 delivered")
            assert calls() == ["x1"] and idle.calls == []
        finally:
            await client.stop()


async def test_a_cancel_its_node_never_answers_ends_the_row_when_another_node_claims_it(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """A node died holding x1: the cancel says its node has not answered, and the node that claims the row
    once its lease has run out ends it cancelled without calling the provider."""
    counting = CountingIntegration()
    async with opened(pg_url, node="node-dead") as dead:
        now = time.time()
        then = now - 3600  # the dead node's claim: its lease ran out long ago
        x1 = Envelope("x1", "hvac-ui", "email.send", int(then * 1000), None, 1, {"to": "a@example.com"})
        await admit(dead.ledger, DeviceRef("dev-1", "acme", "boiler-7"), [x1], lambda _e: Decision(True), then)
        [held] = await dead.ledger.claim(["email.send"], 1, then, owner="node-dead")
        assert held.state is EntryState.RUNNING
        with pytest.raises(CancelPendingError, match="node node-dead holds it and has not answered"):
            operator_api.cancel(dead.intents, ["x1"], "carol", now, wait=0)
        assert row(dead.intents, "x1").state is EntryState.RUNNING
        # What the refusal points to: `intents show` names the cancel still waiting (it said nothing of it)
        assert operator_api.show_intent(dead.intents, ["x1"]).intent.to_json()["cancel_asked"] == "carol"
        async with node(tmp_path, server_cert_files, pg_url, "node-b", counting) as b:
            intents = b.bridge.store.intents
            await until(lambda: row(intents, "x1").state is EntryState.FAILED, what="x1 ended by node B")
            ended = row(intents, "x1")
            # Whether the dead node's call had started nobody knows: the detail says it may have reached the provider.
            detail = "cancelled by operator carol; its last try ended resumed: it may have reached the provider"
            assert (ended.code, ended.detail, ended.tries) == ("cancelled", detail, 1)
            assert counting.calls == []
            assert operator_api.show_intent(intents, ["x1"]).intent.cancel_asked is None  # answered: ended


async def test_a_row_asked_again_while_its_node_ends_it_is_ended_for_the_last_ask(
    tmp_path: Path, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob asks to cancel x2 after the node read Alice's ask and before it ended the row: the node's end,
    conditioned on the ask it read, changed nothing, and x2 stayed running, held by nobody, for a lease."""
    read = cancel_asks.cancel_sql.asked

    def read_then_bob_asks(intents: SqlIntents, owner: str, device_id: str | None) -> list[LedgerEntry]:
        rows = read(intents, owner, device_id)
        with intents.transaction() as conn:
            intents.run(conn, "UPDATE intents SET cancel_ask = '1 bob' WHERE intent_id = 'x2'")
        return rows

    monkeypatch.setattr(cancel_asks.cancel_sql, "asked", read_then_bob_asks)
    gated = GatedIntegration()
    async with sqlite_node(tmp_path, server_cert_files, gated) as harness:
        creds = await harness.enroll()
        client = await harness.connect(creds)
        try:
            intents, calls = await claimed_ahead(harness, gated, client)
            done = await asyncio.to_thread(operator_api.cancel, intents, ["x2"], "alice", time.time())
            assert (done.intent.state, done.intent.code, done.intent.detail) == (
                "failed",
                "cancelled",
                "cancelled by operator bob",
            )
            gated.gate("x1").set()
            await until(lambda: _heard(client, "x1")[-1][0] is AckState.DELIVERED, what="x1 delivered")
            assert calls() == ["x1"]
        finally:
            await client.stop()
