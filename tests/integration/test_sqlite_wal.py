"""The WAL files of the outbox and of a SQLite bridge node do not keep the size a long read let them grow to."""

import itertools
import sqlite3
from pathlib import Path

import pytest

from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from edge_outbox import ops
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from edge_outbox.store import Store
from intent_contract import sqlite_wal
from intent_contract.codec import Envelope

pytestmark = pytest.mark.timeout(60)

LIMIT = 256 * 1024  # sqlite_wal.WAL_SIZE_LIMIT, made small so that the test writes little
ids = itertools.count()


def intents(count: int) -> list[Admitted | object]:
    body = b'{"to": "ops@example.com", "subject": "S", "text": "' + b"x" * 400 + b'"}'
    return [Admitted(f"w{next(ids)}", "hvac", "email.send", body, 0, 1, None, id_given=False) for _ in range(count)]


async def test_the_wal_is_cut_back_once_a_long_read_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_wal, "WAL_SIZE_LIMIT", LIMIT)
    wal = tmp_path / "outbox.db-wal"
    store = Store(tmp_path)
    await store.start()
    try:
        reader = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)  # a backup, an sqlite3 shell
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM intents").fetchone()
        for _ in range(12):  # no checkpoint can pass the reader's snapshot: the WAL grows
            await store.call(ops.commit_intakes, intents(1000), QueueLimits(), 1)
        grown = wal.stat().st_size
        assert grown > 1000 * 4096  # past the autocheckpoint (1,000 pages)
        reader.execute("COMMIT")
        reader.close()
        sizes = []
        for _ in range(5):  # a checkpoint, then the WAL starts again: cut back at that commit
            await store.call(ops.commit_intakes, intents(10), QueueLimits(), 1)
            sizes.append(wal.stat().st_size)
    finally:
        await store.close()
    assert min(sizes) <= LIMIT, (grown, sizes)  # before: it stayed at `grown` until the outbox stopped


async def test_a_sqlite_bridge_nodes_ledger_wal_is_cut_back_once_a_long_read_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on the bridge: its SQLite ledger had no limit either (66 MiB of WAL stayed after a backup)."""
    monkeypatch.setattr(sqlite_wal, "WAL_SIZE_LIMIT", LIMIT)
    ledger = SqliteLedger(tmp_path / "ledger.db")
    wal = tmp_path / "ledger.db-wal"
    device = DeviceRef("dev-1", "acme", "boiler-7")
    now = 1_800_000_000.0

    async def admit(count: int) -> None:
        envelopes = [
            Envelope(
                f"b{next(ids)}", "hvac", "email.send", int(now * 1000), None, 1, {"to": "a@b.c", "text": "x" * 400}
            )
            for _ in range(count)
        ]
        await ledger.admit(device, requests_for(envelopes, lambda _e: Decision(True), now, DEFAULT_MAX_AGE), now)

    await ledger.open()
    try:
        reader = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM intents").fetchone()
        for _ in range(12):
            await admit(1000)
        grown = wal.stat().st_size
        assert grown > 1000 * 4096
        reader.execute("COMMIT")
        reader.close()
        sizes = []
        for _ in range(5):
            await admit(10)
            sizes.append(wal.stat().st_size)
    finally:
        await ledger.close()
    assert min(sizes) <= LIMIT, (grown, sizes)  # before: it stayed at `grown` until the node stopped
