"""Fill the disk under a live outbox: acknowledgements stop, nothing is lost, and it recovers."""

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_outbox import ops
from edge_outbox.enroll_client import enroll
from edge_outbox.errors import StorageError
from edge_outbox.forwarder import Forwarder
from edge_outbox.identity import load_identity
from edge_outbox.intake_rules import admit
from edge_outbox.ops import QueueLimits
from edge_outbox.settings import ForwarderSettings
from edge_outbox.store import Store
from tests.support import disk
from tests.support.bridge import CountingIntegration, Harness, counting, harness
from tests.support.edge import Client, OutboxProcess, cli, email, stored_ids
from tests.support.net import free_port, until, wait_until
from tests.support.stack import CutProxy, point_edge_at

__all__ = ["counting", "harness"]  # fixtures


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with disk.small_disk(tmp_path / "disk") as mount_point:
        yield mount_point


def paused_status(data_dir: Path) -> subprocess.CompletedProcess[str] | None:
    """`edge-outbox status` once it names intake as paused (None before)."""
    result = cli(data_dir, "status", "--json")
    problems = json.loads(result.stdout)["problems"] if result.stdout else []
    return result if any("intake paused" in p and "disk is full" in p for p in problems) else None


@pytest.mark.timeout(240)
def test_full_disk_holds_acks_and_loses_nothing(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    with OutboxProcess(data_dir, free_port()) as outbox:
        app = Client(outbox.port, "filler-app", inflight=50).connect()
        app.publish("outbox/disk/email.send", email("before"), name="before")
        wait_until(lambda: app.acked == {"before"}, what="first intent")
        filler = disk.fill(small_disk)
        total = 2000
        body = "x" * 4000
        for n in range(total):
            app.publish("outbox/disk/email.send", email(f"d{n}", text=body), name=f"d{n}")
        wait_until(lambda: "intake paused" in outbox.log(), timeout=60, what="the outbox noticing")
        held = total + 1 - len(app.acked)
        assert held > 0, "every publish was acknowledged on a full disk"
        assert outbox.proc is not None and outbox.proc.poll() is None, "the outbox died on a full disk"
        # What the health timer and the image's HEALTHCHECK run: it read what the outbox had committed to its
        # database last, which on a full disk was "intake working", and exited 0 for as long as the disk was full.
        status = wait_until(lambda: paused_status(data_dir), timeout=30, what="status saying intake is paused")
        assert status.returncode == 1, status.stdout
        filler.unlink()  # the operator frees space
        wait_until(lambda: len(app.acked) == total + 1, timeout=120, what="acks after space was freed")
        app.close()
        stored = stored_ids(data_dir)
        assert app.acked <= stored.keys()
        assert len(stored) == total + 1
        log = outbox.log()
        assert "intake resumed" in log
        # Reported, not shouted: one error line per episode from intake and from the writer, no traceback.
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) <= 3, "\n".join(errors[:20])
        assert "Traceback" not in log, log[-3000:]


async def test_the_forwarder_outlives_a_full_disk_while_the_bridge_is_away(
    small_disk: Path, harness: Harness, counting: CountingIntegration, caplog: pytest.LogCaptureFixture
) -> None:
    """While the link is down the forwarder reads the store at every turn of its backoff; a full disk fails every
    read that joins a failing commit. Before, such a read ended the forwarder for good (StorageError outside its
    handlers): the outbox took intents again once the disk had room, and forwarded none."""
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = small_disk / "edge"
    await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    # Nothing listens where the edge connects until the disk has room again: refused connects, then a proxy.
    away = free_port()
    point_edge_at(edge_dir, away)
    proxy = None
    identity = load_identity(edge_dir)
    assert identity is not None
    store = Store(edge_dir)
    await store.start()
    forwarder = Forwarder(store, edge_dir, identity, ForwarderSettings(backoff_base_s=0.05, backoff_cap_s=0.1), now_ms)
    task = asyncio.create_task(forwarder.run())
    filler = None
    try:
        await intake(store, "kept")
        filler = disk.fill(small_disk)

        async def failing_reads_seen() -> bool:
            with contextlib.suppress(StorageError):
                await intake(store, "x")  # a write that fails the commit group the forwarder's reads join
            lines = forwarder.errors.lines(now_ms())
            return task.done() or any(line.code == "storage_error" for line in lines)

        await until(failing_reads_seen, what="the forwarder reading a full disk")
        assert not task.done(), task.exception()
        filler.unlink()
        filler = None
        proxy = CutProxy(harness.mqtt_port, port=away).start()
        await until(lambda: [job.intent_id for job in counting.calls] == ["kept"], what="the intent delivered")
        # A full disk is a turn without news, not a fault of the forwarder's own (those are logged with a
        # traceback and start it again after a backoff, which would also have kept this task alive).
        assert not [r for r in caplog.records if r.getMessage().startswith("the forwarder failed")]
    finally:
        forwarder.request_stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        if proxy is not None:
            proxy.close()
        if filler is not None:
            filler.unlink()


async def intake(store: Store, intent_id: str) -> None:
    raw = json.dumps({"to": "ops@example.com", "subject": "Alarm", "text": "hot", "id": intent_id}).encode()
    decision = admit("outbox/app/email.send", raw, now_ms(), str)
    await store.call(ops.commit_intake, decision, QueueLimits(), now_ms())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.timeout(180)
def test_apps_with_persistent_sessions_connect_on_a_full_disk_and_get_their_statuses_after(small_disk: Path) -> None:
    """On a full disk a persistent app's CONNECT went unanswered (the write of when it was seen failed) with a
    traceback in the log at each try, a new persistent session likewise; and a resumed app's SUBSCRIBE (the same
    filter again) failed its save and closed the connection, which resent its publishes each time."""
    data_dir = small_disk / "data"
    with OutboxProcess(data_dir, free_port()) as outbox:
        listener = Client(outbox.port, "listener", clean=False).connect()
        listener.subscribe("outbox/disk/status/#")
        filler = disk.fill(small_disk)
        app = Client(outbox.port, "app").connect()
        names = [f"f{n}" for n in range(20)]
        for name in names:
            app.publish("outbox/disk/email.send", email(name, text="x" * 4000), name=name)
        wait_until(lambda: "intake paused" in outbox.log(), timeout=60, what="the outbox noticing")
        listener.close()
        listener = Client(outbox.port, "listener", clean=False).connect()  # the app comes back, resumes
        assert listener.connects == 1, listener.connect_result
        listener.subscribe("outbox/disk/status/#")  # as apps do on every connect: answered, the connection kept
        fresh = Client(outbox.port, "fresh", clean=False).connect()  # a new persistent session: refused, said
        assert fresh.connects == 0 and str(fresh.connect_result) == "Server unavailable"  # CONNACK 3
        fresh.close()
        filler.unlink()
        wait_until(lambda: app.acked == set(names), timeout=120, what="acks after space was freed")
        wait_until(lambda: listener.ids_with("accepted") == set(names), what="the accepted statuses")
        assert listener.connects == 1
        assert stored_ids(data_dir) == dict.fromkeys(names, "accepted")
        listener.close()
        app.close()
        log = outbox.log()
        assert "Traceback" not in log
        assert "refused client fresh@" in log and "its session cannot be stored" in log
