"""The outbox's WAL file does not keep the size a long read let it grow to."""

import itertools
import sqlite3
from pathlib import Path

import pytest

from edge_outbox import db, ops
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from edge_outbox.store import Store

pytestmark = pytest.mark.timeout(60)

LIMIT = 256 * 1024  # db.WAL_SIZE_LIMIT, made small so that the test writes little
ids = itertools.count()


def intents(count: int) -> list[Admitted | object]:
    body = b'{"to": "ops@example.com", "subject": "S", "text": "' + b"x" * 400 + b'"}'
    return [Admitted(f"w{next(ids)}", "hvac", "email.send", body, 0, 1, None, id_given=False) for _ in range(count)]


async def test_the_wal_is_cut_back_once_a_long_read_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "WAL_SIZE_LIMIT", LIMIT, raising=False)
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
