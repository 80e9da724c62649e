"""A node's PostgreSQL sessions terminated (pg_terminate_backend: a failover, an operator, a pooler restart)
while a provider call is under way: the call's result is still recorded, and the job does not run twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, email, make_settings, running_bridge, until
from tests.support.stores import PG_ADMIN, pg_url

__all__ = ["pg_url"]  # fixtures


def terminate_sessions(url: StoreUrl) -> int:
    """End every session of the test database but this one; how many were ended."""
    database = url.location.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


class TerminatingIntegration:
    """email.send whose first call ends the node's database sessions before it returns (it was sent)."""

    kind = "email.send"
    concurrency = 4

    def __init__(self, url: StoreUrl) -> None:
        self.url = url
        self.calls: list[Job] = []
        self.ended = 0

    async def execute(self, job: Job) -> Outcome:
        self.calls.append(job)
        if len(self.calls) == 1:
            self.ended = await asyncio.to_thread(terminate_sessions, self.url)
        return Outcome("sent")

    async def aclose(self) -> None:
        return None


async def test_a_result_whose_sessions_were_terminated_mid_call_is_recorded_once(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """The finish after the call met a terminated pooled connection and failed once; the row stayed running
    until its lease ran out, and the job ran again: two emails for one intent."""
    provider = TerminatingIntegration(pg_url)
    settings = make_settings(tmp_path, server_cert_files, store=pg_url, node_id="node-a", bridge={"lease": "3s"})
    async for bridge in running_bridge(settings, server_cert_files["ca"], {"email.send": provider}):
        await _send_one(bridge)
    assert provider.ended > 0
    assert [job.intent_id for job in provider.calls] == ["t1"]


async def _send_one(bridge: Harness) -> None:
    client = await bridge.connect(await bridge.enroll())
    try:
        client.send([email("t1")])
        await until(lambda: "delivered" in client.states().get("t1", []), what="t1 delivered")
    finally:
        await client.stop()


async def test_the_first_batch_and_connect_after_the_sessions_were_terminated_are_served(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl
) -> None:
    """After the node's sessions were ended (the database is up), the pools handed out their dead connections:
    the next connect was refused (store_unavailable) and the next batch failed (no ack: the edge sends it again
    after its ack timeout)."""
    settings = make_settings(tmp_path, server_cert_files, store=pg_url, node_id="node-a")
    async for bridge in running_bridge(settings, server_cert_files["ca"], {"email.send": CountingIntegration()}):
        await _after_terminations(bridge, pg_url)


async def _after_terminations(bridge: Harness, pg_url: StoreUrl) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        assert await asyncio.to_thread(terminate_sessions, pg_url) > 0
        client.send([email("u1")])
        await until(lambda: "accepted" in client.states().get("u1", []), what="u1 accepted")
    finally:
        await client.stop()
    assert await asyncio.to_thread(terminate_sessions, pg_url) > 0
    again = await bridge.connect(creds)
    try:
        assert again.accepted
    finally:
        await again.stop()
