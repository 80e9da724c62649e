"""Operators' commands run on any machine; what they record and the bounds they delete by are the store's
time (PostgreSQL's clock), not that machine's. Run here under faketime, a machine days ahead of the nodes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from cloud_bridge import operator_api
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreUrl
from cloud_bridge.usage import day_of
from intent_contract.codec import AckState, Envelope
from tests.support.stack import bridge_cli
from tests.support.stores import admit, opened, pg_url

__all__ = ["pg_url"]  # fixture

DEV = DeviceRef("dev-1", "acme", "boiler-7")
AHEAD = ["faketime", "-f", "+10d"]  # the operator's machine: ten days ahead of the store


def env(ident: str, created: float) -> Envelope:
    return Envelope(ident, "hvac-ui", "email.send", int(created * 1000), None, 1, {"to": "a@example.com"})


def allow(_envelope: Envelope) -> Decision:
    return Decision(True)


async def _ended(store: Store, envelope: Envelope, state: EntryState, now: float) -> None:
    await admit(store.ledger, DEV, [envelope], allow, now)
    [entry] = await store.ledger.claim(["email.send"], 1, now)
    await store.ledger.finish(entry, state, "" if state is EntryState.DELIVERED else "smtp_refused", "", now, "smtp")
    await store.ledger.confirm(DEV.device_id, [envelope.id])


async def _cli(tmp_path: Path, url: StoreUrl, *args: str) -> str:
    command = [*AHEAD, *bridge_cli(), "intents", *args, "--store", str(url), "--data-dir", str(tmp_path / "op")]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_purge_from_a_machine_days_ahead_keeps_what_the_bridge_would_admit_again(
    tmp_path: Path, pg_url: StoreUrl
) -> None:
    """A purge from a machine ten days ahead deleted a delivered intent created 85 days ago (its bounds, "changed
    an hour ago" and "too old to be admitted again", 90 days by default, were that machine's), and a late copy of
    it (an old bundle imported, an edge restored from a backup) was admitted as new: executed twice."""
    now = time.time()
    delivered = env("a", now - 85 * 86_400)
    async with opened(pg_url) as store:
        await _ended(store, delivered, EntryState.DELIVERED, now)
        done = json.loads(await _cli(tmp_path, pg_url, "purge", "--older-than", "1h", "--json"))
        assert done["intents"] == 0
        [ack] = await admit(store.ledger, DEV, [delivered], allow, time.time())
        assert ack.state is AckState.DELIVERED  # a duplicate of the row kept, not a new intent to run


async def test_retry_and_ls_from_a_machine_days_ahead_record_and_read_the_stores_time(
    tmp_path: Path, pg_url: StoreUrl
) -> None:
    """A retry from a machine ten days ahead stamped the row's `updated` and its audit line ten days on (the
    retention purge counts from `updated`; the audit read as the future), and `ls` aged rows by that machine."""
    now = time.time()
    async with opened(pg_url) as store:
        await _ended(store, env("b", now), EntryState.FAILED, now)
        await _cli(tmp_path, pg_url, "retry", "dev-1", "b")
        shown = operator_api.show_intent(store.intents, ["dev-1", "b"])
        after = time.time()
        assert shown.intent.state == "queued"
        assert now <= shown.intent.updated <= after
        assert now <= shown.history[-1].at <= after
        listed = await _cli(tmp_path, pg_url, "ls")
        assert "dev-1" in listed and "ago" in listed and "d ago" not in listed


async def test_usage_from_a_machine_days_ahead_counts_the_stores_days(tmp_path: Path, pg_url: StoreUrl) -> None:
    """`usage` (the last 7 days to today by default) from a machine ten days ahead counted from that machine's
    today: its days were all still to come at the store, and it said "no usage" for a bridge that delivered
    today; one a day behind left today out."""
    now = time.time()
    async with opened(pg_url) as store:
        await _ended(store, env("c", now), EntryState.DELIVERED, now)
    command = [*AHEAD, *bridge_cli(), "usage", "--json", "--store", str(pg_url), "--data-dir", str(tmp_path / "op")]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    usage = json.loads(done.stdout)
    assert (usage["today"], usage["until"], usage["total"]["count"]) == (day_of(now), day_of(now), 1), usage
