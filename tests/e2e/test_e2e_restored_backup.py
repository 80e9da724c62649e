"""A data dir restored from a backup taken while intents waited at the bridge: every one ends final again.

The real bridge and edge: intents the bridge holds (`forwarded` at the edge, its provider refusing for now)
are in the backup; they are executed and confirmed after it; the edge is put back to the backup.
"""

from __future__ import annotations

import sqlite3
from collections import Counter

from tests.support.net import wait_until
from tests.support.stack import Stack, ids

HELD = "[bridge]\nretry_base = 0.1\nretry_cap = 0.5\nmax_attempts = 1000\n\n"


def _backup(stack: Stack) -> bytes:
    """`sqlite3 outbox.db ".backup FILE"` beside the running outbox, as docs/deploy.md says; the file's bytes."""
    target = stack.work / "backup.db"
    with sqlite3.connect(stack.edge_dir / "outbox.db") as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    source.close()
    copy.close()
    return target.read_bytes()


def test_intents_forwarded_in_a_restored_backup_end_final(stack: Stack) -> None:
    config = stack.bridge.config.read_text().replace("[bridge]\nretry_base = 0.1\nretry_cap = 1.0\n\n", HELD)
    stack.bridge.config.write_text(config)
    stack.bridge.stop()
    stack.bridge.start()
    held = ids("held", 20)
    for intent_id in held:
        stack.sink.answer(intent_id, "451 4.3.0 try again later")
    stack.start_edge()
    acked = stack.publish_all(stack.app(), held)
    wait_until(
        lambda: all(stack.edge_states().get(i) == "forwarded" for i in held),
        60,
        what="every intent forwarded (the bridge has it; its provider refuses it for now)",
    )
    backup = _backup(stack)
    for intent_id in held:
        stack.sink.answer(intent_id, None)
    stack.wait_delivered(held, 60)
    assert stack.edge is not None
    assert stack.edge.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        (stack.edge_dir / f"outbox.db{suffix}").unlink(missing_ok=True)
    (stack.edge_dir / "outbox.db").write_bytes(backup)
    assert Counter(stack.edge_states().values()) == {"forwarded": len(held)}
    stack.start_edge()
    wait_until(
        lambda: all(stack.edge_states().get(i) == "delivered" for i in held),
        60,
        what=f"every restored intent final again; edge states: {Counter(stack.edge_states().values())}",
    )
    executions = stack.sink.executions()
    assert acked == set(held)
    assert all(executions[i] == 1 for i in held), executions
