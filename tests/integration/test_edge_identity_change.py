"""Intents sent as a device this data dir no longer is, against a real bridge on loopback TLS: the forwarder
does not send them again as the new one (the bridge would admit them as other intents and run them twice)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

from edge_outbox import db, forward_ops, offline_ops, ops
from edge_outbox.enroll_client import enroll
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import load_identity
from edge_outbox.intake_rules import admit
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from tests.support.bridge import CountingIntegration, Harness, counting, harness, until

__all__ = ["counting", "harness"]  # fixtures

EMAIL = {"to": "ops@example.com", "subject": "Alarm", "text": "Boiler 3 hot"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _enroll(edge_dir: Path, bridge: Harness, name: str) -> str:
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", name, 600, time.time())
    identity = await asyncio.to_thread(enroll, edge_dir, bridge.base_url, code, bridge.ca_file)
    return identity.device_id


def _rows(edge_dir: Path) -> dict[str, tuple[str, str, str]]:
    conn = db.connect(edge_dir)
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute("SELECT id, state, code, detail FROM intents")}
    finally:
        conn.close()


def _store_and_send_one(edge_dir: Path) -> None:
    """Two intents; the first sent and not answered (the link went down with it)."""
    conn = db.connect(edge_dir)
    try:
        for intent_id in ("sent-before", "never-sent"):
            raw = json.dumps({**EMAIL, "id": intent_id}).encode()
            ops.commit_intake(conn, admit("outbox/app/email.send", raw, now_ms(), lambda: "x"), QueueLimits(), now_ms())
        sent = forward_ops.take_batch(conn, limit=1, max_bytes=1 << 20, sent_before=now_ms(), now=now_ms())
        assert [r.id for r in sent] == ["sent-before"]
    finally:
        conn.close()


@pytest.mark.timeout(60)
async def test_enrolling_again_ends_what_the_old_device_sent_and_forwards_the_rest(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    edge_dir = tmp_path / "edge"
    old = await _enroll(edge_dir, harness, "edge-old")
    _store_and_send_one(edge_dir)
    shutil.move(edge_dir / "identity", tmp_path / "old-identity")
    new = await _enroll(edge_dir, harness, "edge-new")

    state, code, detail = _rows(edge_dir)["sent-before"]
    assert (state, code) == ("failed", "identity_changed")
    assert old in detail and new in detail
    await _forward_until_delivered(edge_dir, "never-sent")
    assert [job.intent_id for job in counting.calls] == ["never-sent"]


@pytest.mark.timeout(60)
async def test_the_forwarder_ends_what_another_device_sent_before_it_sends(
    tmp_path: Path, harness: Harness, counting: CountingIntegration
) -> None:
    """The identity replaced without `enroll` (files copied in by hand): the forwarder's start finds the
    database sent as another device."""
    edge_dir = tmp_path / "edge"
    await _enroll(edge_dir, harness, "edge-new")
    _store_and_send_one(edge_dir)
    conn = db.connect(edge_dir)
    try:  # what the database says of the device it sent as, had another identity sent those
        offline_ops.send_as(conn, "edge-before", now_ms())
    finally:
        conn.close()
    await _forward_until_delivered(edge_dir, "never-sent")
    assert _rows(edge_dir)["sent-before"][:2] == ("failed", "identity_changed")
    assert [job.intent_id for job in counting.calls] == ["never-sent"]


async def _forward_until_delivered(edge_dir: Path, intent_id: str) -> None:
    store = Store(edge_dir)
    await store.start()
    identity = load_identity(edge_dir)
    assert identity is not None
    task = asyncio.create_task(Forwarder(store, edge_dir, identity, ForwarderSettings(), now_ms).run())
    try:
        await until(lambda: _rows(edge_dir)[intent_id][0] == "delivered", timeout=30, what=f"{intent_id} delivered")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
