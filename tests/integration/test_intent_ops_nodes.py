"""An operator's retry and cancel reach a device held by another node (PostgreSQL, two nodes in process).

Node A holds the device's session and executes nothing; node B executes. The operation is made through
node B's store (as its dashboard does): NOTIFY reaches node A, which sends the device the row's status.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cloud_bridge import operator_api
from cloud_bridge.errors import RevokedDeviceError
from cloud_bridge.intent_sql import IntentQuery
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Ack, AckState
from tests.support.bridge import CountingIntegration, DeviceClient, a_admits_b_executes, email, node, until
from tests.support.stores import pg_url

__all__ = ["pg_url"]  # fixtures


def _seen(client: DeviceClient, intent_id: str) -> list[tuple[AckState, int]]:
    with client._lock:  # the test client's own lock over what it received
        return [(a.state, a.attempt) for a in client.acks if a.id == intent_id]


async def test_retry_and_cancel_made_on_node_b_reach_the_device_on_node_a(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    on_a, on_b = CountingIntegration(), CountingIntegration()
    async with a_admits_b_executes(tmp_path, server_cert_files, pg_url, on_a, on_b) as (_a, b, _creds, client):
        client.send([email("x1", subject="fail")])
        failed = [(AckState.ACCEPTED, 1), (AckState.FAILED, 1)]
        await until(lambda: _seen(client, "x1") == failed, what="the first failure at the device")

        assert b.bridge.executor is not None
        await b.bridge.executor.stop()  # hold the retried row in the queue, to see `accepted` alone
        done = operator_api.retry(b.bridge.store.intents, ["x1"], "alice", time.time())
        assert done.intent.attempt == 2
        await until(lambda: _seen(client, "x1") == [*failed, (AckState.ACCEPTED, 2)], what="the retry's accepted")
        await b.bridge.executor.start()
        await until(
            lambda: _seen(client, "x1") == [*failed, (AckState.ACCEPTED, 2), (AckState.FAILED, 2)],
            what="the retried row's new result at the device",
        )
        assert [(j.intent_id, j.attempt) for j in on_b.calls] == [("x1", 1), ("x1", 2)]

        await b.bridge.executor.stop()
        client.send([email("x2")])
        await until(lambda: _seen(client, "x2") == [(AckState.ACCEPTED, 1)], what="x2 accepted")
        operator_api.cancel(b.bridge.store.intents, ["x2"], "bob", time.time())
        await until(lambda: len(_seen(client, "x2")) == 2, what="the cancel at the device")
        with client._lock:
            [last] = [a for a in client.acks if a.id == "x2"][1:]
        assert (last.state, last.code, last.detail) == (AckState.FAILED, "cancelled", "cancelled by operator bob")


async def test_a_retried_rows_new_result_reaches_the_device_when_node_a_reads_it_only_once_final(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """Node A sent the device the first result and the device has not confirmed it yet; the operator retries
    on node B, whose executor runs the new attempt to its end before node A reads the row (node A's reads
    are held back here, as a busy node's are). Node A then read the new result as one it had sent already
    (the same intent id) and left it out: the device never heard the retry's result until it reconnected."""
    on_a, on_b = CountingIntegration(), CountingIntegration()
    async with a_admits_b_executes(tmp_path, server_cert_files, pg_url, on_a, on_b) as (a, b, _creds, client):
        client.send([email("x1", subject="fail")])
        failed = [(AckState.ACCEPTED, 1), (AckState.FAILED, 1)]
        await until(lambda: _seen(client, "x1") == failed, what="the first failure at the device")

        ledger = a.bridge.store.ledger
        read, reads_held = ledger.unconfirmed, asyncio.Event()

        async def held_read(device_id: str) -> list[Ack]:
            await reads_held.wait()
            return await read(device_id)

        ledger.unconfirmed = held_read  # type: ignore[method-assign]
        operator_api.retry(b.bridge.store.intents, ["x1"], "alice", time.time())
        await until(lambda: len(on_b.calls) == 2, what="the retry run on node B")
        await until(lambda: b.bridge.store.intents.find("x1")[0].state is EntryState.FAILED, what="the retry's result")
        reads_held.set()
        client.send([email("x2")])  # a later result node A sends through the same read
        await until(lambda: (AckState.DELIVERED, 1) in _seen(client, "x2"), what="x2 at the device")
        assert (AckState.FAILED, 2) in _seen(client, "x1")


async def test_each_retried_row_is_announced_once_not_again_on_every_later_signal(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """An operator (a script) retries many failed intents of one device while they wait in the queue. Each
    retry signals node A, which sent the device `accepted` for every live retried row again: n retries, n(n+1)/2
    acks (45,150 for 300; 50 million for 10,000). Each is now announced once per attempt."""
    async with (
        node(tmp_path, server_cert_files, pg_url, "node-a", CountingIntegration()) as a,
        node(tmp_path, server_cert_files, pg_url, "node-b", CountingIntegration()) as b,
    ):
        client = await a.connect(await a.enroll())
        ids = [f"f{n}" for n in range(20)]
        try:
            client.send([email(i, subject="fail") for i in ids])
            await until(lambda: all(_seen(client, i)[-1:] == [(AckState.FAILED, 1)] for i in ids), what="all failed")
            for executor in (a.bridge.executor, b.bridge.executor):
                assert executor is not None
                await executor.stop()  # the retried rows wait in the queue (the provider is still down)
            for i in ids:
                operator_api.retry(b.bridge.store.intents, [i], "alice", time.time())
                await until(lambda i=i: (AckState.ACCEPTED, 2) in _seen(client, i), what=f"{i} announced")
            client.send([email("marker")])  # a later ack on the same session: what came before it is all in
            await until(lambda: _seen(client, "marker") == [(AckState.ACCEPTED, 1)], what="the marker")
            assert {i: _seen(client, i).count((AckState.ACCEPTED, 2)) for i in ids} == dict.fromkeys(ids, 1)
        finally:
            await client.stop()


async def test_a_retry_made_on_a_clock_ahead_of_the_nodes_runs_at_once(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """`cloud-bridge intents retry` runs on any machine with the store's settings, and the retried row was due
    at that machine's time: made on a laptop whose clock was an hour ahead of the nodes', the retry answered
    `now queued` and the intent waited an hour in the queue (a node claims rows due by its own clock)."""
    on_a, on_b = CountingIntegration(), CountingIntegration()
    async with a_admits_b_executes(tmp_path, server_cert_files, pg_url, on_a, on_b) as (_a, b, _creds, client):
        client.send([email("x1", subject="fail")])
        failed = [(AckState.ACCEPTED, 1), (AckState.FAILED, 1)]
        await until(lambda: _seen(client, "x1") == failed, what="the first failure at the device")
        ahead = time.time() + 3600  # the operator's machine's clock
        done = operator_api.retry(b.bridge.store.intents, ["x1"], "alice", ahead)
        assert (done.intent.state, done.intent.attempt) == ("queued", 2)
        await until(lambda: (AckState.FAILED, 2) in _seen(client, "x1"), what="the retried attempt run and its result")
        assert [(j.intent_id, j.attempt) for j in on_b.calls] == [("x1", 1), ("x1", 2)]


async def test_a_retry_of_a_revoked_devices_intent_is_refused_not_queued_to_fail_at_once(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """The ledger lets a failed row go back to the queue whatever its device, and a claim ends a revoked device's
    row `device_revoked` unrun: retrying an intent of a revoked device answered "retried ...: now queued
    (attempt 2)" and ran nothing. It is refused, saying why, and nothing changes."""
    on_a, on_b = CountingIntegration(), CountingIntegration()
    async with a_admits_b_executes(tmp_path, server_cert_files, pg_url, on_a, on_b) as (_a, b, creds, client):
        client.send([email("x1", subject="fail")])
        await until(lambda: (AckState.FAILED, 1) in _seen(client, "x1"), what="the first failure at the device")
        intents = b.bridge.store.intents
        [listed] = operator_api.list_intents(intents, IntentQuery(device_id=creds.device_id))
        assert listed.retryable
        b.bridge.registry.revoke(creds.device_id, time.time())
        # Listed (CLI, `--json`, the dashboard's Retry button) and shown as not retryable: it was, then refused
        [listed] = operator_api.list_intents(intents, IntentQuery(device_id=creds.device_id))
        assert not listed.retryable
        assert not operator_api.show_intent(intents, ["x1"]).intent.retryable
        with pytest.raises(RevokedDeviceError, match=f"device {creds.device_id} is revoked"):
            operator_api.retry(b.bridge.store.intents, ["x1"], "alice", time.time())
        [row] = b.bridge.store.intents.find("x1")
        assert (row.state, row.attempt, row.code) == (EntryState.FAILED, 1, "test_refused")
        events = [r.event for r in b.bridge.store.intents.history(creds.device_id, "x1")]
        assert "requeue" not in events
        assert [(j.intent_id, j.attempt) for j in on_b.calls] == [("x1", 1)]
