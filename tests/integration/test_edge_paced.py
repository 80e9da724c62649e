"""Work on many rows goes in paced steps (retention, `retry --state`): an app's publish waits for one step at
most, and commits between them."""

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_outbox import db, ops, paced, retention
from edge_outbox.cli import main
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from tests.support.edge import old_final_intents
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(60)

STEP = 500  # rows per step (docs/edge.md); the work below takes three steps
OLD = int(time.time() * 1000) - 30 * 86_400_000  # beyond the default retention of 7 days


def live_intent(n: int) -> Admitted:
    return Admitted(f"live-{n}", "live", "email.send", b"{}", 0, OLD, None, id_given=True)


def live_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM intents WHERE app = 'live'").fetchone()[0])


def seeded(data_dir: Path) -> None:
    conn = db.connect(data_dir)
    old_final_intents(conn, 2 * STEP + 1, OLD)
    ops.commit_intake(conn, live_intent(0), QueueLimits(), OLD)  # pending: never purged
    conn.close()


def recording_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Each purge step's (rows deleted, app intents committed before it), as the store saw them."""
    steps: list[tuple[int, int]] = []
    purge = retention.purge

    def step(conn: sqlite3.Connection, before: int, *args: object, **kw: int) -> int:
        live = live_count(conn)
        steps.append((deleted := purge(conn, before, *args, **kw), live))  # type: ignore[arg-type]
        return deleted

    monkeypatch.setattr(retention, "purge", step)
    return steps


def left(data_dir: Path) -> list[str]:
    return [r[0] for r in db.connect(data_dir).execute("SELECT app FROM intents WHERE app = 'old'")]


def test_a_pause_is_as_long_as_the_step_and_bounded() -> None:
    assert paced.pause_after(0.003) == 0.003
    assert paced.pause_after(-1.0) == 0.0  # a clock that stepped back
    assert paced.pause_after(60.0) == paced.MAX_PAUSE_S


async def test_the_running_outboxs_retention_purges_in_steps_with_intake_committed_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(tmp_path)
    steps = recording_steps(monkeypatch)
    pauses: list[float] = []
    outbox = Outbox(OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False, housekeeping_s=0.05))

    async def intake_in_the_pause(seconds: float) -> None:
        pauses.append(seconds)  # an app's intent is taken while the purge pauses: the writer is free
        await outbox.store.call(ops.commit_intake, live_intent(len(pauses)), QueueLimits(), int(time.time() * 1000))

    monkeypatch.setattr(paced, "yield_to_intake", intake_in_the_pause, raising=False)
    await outbox.start()
    try:
        async with asyncio.timeout(30):
            while not steps or steps[-1][0] == STEP:
                await asyncio.sleep(0.02)
    finally:
        await outbox.stop()
    # Steps of STEP rows at most, one store operation each, and between two of them an intent committed.
    assert steps == [(STEP, 1), (STEP, 2), (1, 3)]
    assert len(pauses) == 2 and all(0 <= p <= paced.MAX_PAUSE_S for p in pauses)
    assert left(tmp_path) == []
    assert live_count(db.connect(tmp_path)) == 3


def test_edge_outbox_purge_commits_each_step_so_the_outbox_can_write_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded(tmp_path)
    steps = recording_steps(monkeypatch)
    other = db.connect(tmp_path)  # the running outbox's writer, which must not wait for the whole purge
    other.execute("PRAGMA busy_timeout = 0")
    rests: list[float] = []

    def write_in_the_rest(seconds: float) -> None:
        rests.append(seconds)
        other.execute("BEGIN IMMEDIATE")  # 'database is locked' if the purge still held its transaction
        ops.commit_intake(other, live_intent(len(rests)), QueueLimits(), OLD)
        other.execute("COMMIT")

    monkeypatch.setattr(paced, "rest_between_transactions", write_in_the_rest, raising=False)
    result = CliRunner().invoke(main, ["purge", "--data-dir", str(tmp_path), "--older-than", "7d", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"purged": 2 * STEP + 1}
    assert steps[0] == (2 * STEP + 1, 1)  # the dry run's count, then the steps
    assert steps[1:] == [(STEP, 1), (STEP, 2), (1, 3)]
    assert left(tmp_path) == []


def test_edge_outbox_retry_state_commits_each_step_and_retries_each_intent_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = db.connect(tmp_path)
    old_final_intents(conn, 2 * STEP + 1, OLD)
    conn.execute("UPDATE intents SET state = 'failed', sent = 1")
    conn.close()
    steps: list[int] = []
    retry_state = ops.retry_state

    def counted(conn: sqlite3.Connection, *args: object, **kw: int) -> list[object]:
        steps.append(len(done := retry_state(conn, *args, **kw)))  # type: ignore[arg-type]
        return done  # type: ignore[return-value]

    other = db.connect(tmp_path)  # the running outbox's writer, which must not wait for the whole retry
    other.execute("PRAGMA busy_timeout = 0")

    def fail_again_in_the_rest(_seconds: float) -> None:
        # 'database is locked' if the retry still held its transaction; the bridge's answer to the first
        # retried intent arrives: failed again, before the command has gone through the rest.
        other.execute("UPDATE intents SET state = 'failed' WHERE id = 'old-1' AND state = 'accepted'")

    monkeypatch.setattr(ops, "retry_state", counted)
    monkeypatch.setattr(paced, "rest_between_transactions", fail_again_in_the_rest, raising=False)
    result = CliRunner().invoke(main, ["retry", "--state", "failed", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"queued again: {2 * STEP + 1} intents"
    assert steps == [STEP, STEP, 1]
    rows = dict(db.connect(tmp_path).execute("SELECT state || '/' || attempt, COUNT(*) FROM intents GROUP BY 1"))
    assert rows == {"accepted/2": 2 * STEP, "failed/2": 1}  # old-1 was retried once, not again


def test_status_says_how_much_of_the_database_a_purge_freed(tmp_path: Path) -> None:
    """A purge frees pages inside outbox.db and the file keeps its size (SQLite reuses them): `status` said
    only `database: N bytes`, the same before and after, and an owner could not tell a full file from one
    mostly free."""
    conn = db.connect(tmp_path)
    old_final_intents(conn, 20_000, updated=1)
    conn.execute("UPDATE intents SET payload = zeroblob(2000)")  # ~40 MB of old results
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()

    def status() -> dict[str, int]:
        result = CliRunner().invoke(main, ["status", "--json", "--data-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        return {k: report[k] for k in ("database_bytes", "database_free_bytes")}

    before = status()
    assert before["database_free_bytes"] < before["database_bytes"] // 10
    result = CliRunner().invoke(main, ["purge", "--older-than", "1d", "--yes", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    after = status()
    assert after["database_free_bytes"] > 40_000_000 and after["database_bytes"] >= after["database_free_bytes"]
    text = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path)]).output
    assert f"({after['database_free_bytes']} free, reused before it grows)" in text
