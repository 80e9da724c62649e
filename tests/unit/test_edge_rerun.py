"""Acks that carry the bridge's attempt: a retry at the bridge reaches the edge, a stale ack changes nothing.

A real outbox database driven through the ops functions; what the app hears is the status log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_outbox import db, event_log, forward_ops, ops
from edge_outbox.forward_ops import RERUN_CODE
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from edge_outbox.states import State
from intent_contract.codec import Ack, AckState

NOW = 1_000_000


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.connect(tmp_path)
    yield connection
    connection.close()


def _tx(conn: sqlite3.Connection, fn: object, *args: object, **kwargs: object) -> object:
    conn.execute("BEGIN IMMEDIATE")
    result = fn(conn, *args, **kwargs)  # type: ignore[operator]
    conn.execute("COMMIT")
    return result


def _failed(conn: sqlite3.Connection, intent_id: str = "i1") -> int:
    """An intent sent, accepted and failed at the bridge; returns the status log's head."""
    item = Admitted(intent_id, "app", "email.send", b"{}", 0, NOW, None, True)
    _tx(conn, ops.commit_intake, item, QueueLimits(), NOW)
    _tx(conn, forward_ops.take_batch, limit=10, max_bytes=1 << 20, sent_before=NOW + 1, now=NOW)
    _tx(conn, forward_ops.apply_acks, [Ack(intent_id, AckState.ACCEPTED, at=NOW, attempt=1)], NOW)
    _tx(conn, forward_ops.apply_acks, [Ack(intent_id, AckState.FAILED, "smtp_refused", "550", NOW, attempt=1)], NOW)
    assert ops.get(conn, intent_id).state is State.FAILED
    return event_log.last_event_seq(conn)


def _heard(conn: sqlite3.Connection, after: int) -> list[tuple[str, str]]:
    return [(str(e.state), e.code) for e in event_log.events_after(conn, after)]


def test_an_accepted_ack_for_a_newer_attempt_brings_a_failed_intent_back_then_its_result(
    conn: sqlite3.Connection,
) -> None:
    head = _failed(conn)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.ACCEPTED, at=NOW + 1, attempt=2)], NOW + 1)
    row = ops.get(conn, "i1")
    assert (row.state, row.attempt, row.code) == (State.FORWARDED, 2, RERUN_CODE)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.DELIVERED, "", "250 ok", NOW + 2, attempt=2)], NOW + 2)
    assert ops.get(conn, "i1").state is State.DELIVERED
    assert _heard(conn, head) == [("forwarded", RERUN_CODE), ("delivered", "")]


def test_a_final_ack_for_a_newer_attempt_is_heard_as_the_rerun_then_its_result(conn: sqlite3.Connection) -> None:
    head = _failed(conn)  # the edge was away while the operator retried and the retry ran
    applied = _tx(
        conn, forward_ops.apply_acks, [Ack("i1", AckState.FAILED, "cancelled", "by x", NOW + 1, attempt=2)], NOW + 1
    )
    assert applied.final_ids == ["i1"]  # type: ignore[attr-defined]
    assert _heard(conn, head) == [("forwarded", RERUN_CODE), ("failed", "cancelled")]
    assert ops.get(conn, "i1").attempt == 2


def test_stale_acks_of_an_older_attempt_change_nothing(conn: sqlite3.Connection) -> None:
    head = _failed(conn)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.ACCEPTED, at=NOW + 1, attempt=2)], NOW + 1)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.DELIVERED, at=NOW + 2, attempt=2)], NOW + 2)
    seen = event_log.last_event_seq(conn)
    # The first attempt's words, arriving late (a resend, another node): ignored.
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.ACCEPTED, at=NOW + 3, attempt=1)], NOW + 3)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.FAILED, "x", "", NOW + 3, attempt=1)], NOW + 3)
    assert ops.get(conn, "i1").state is State.DELIVERED
    assert event_log.last_event_seq(conn) == seen > head


def test_acks_without_an_attempt_keep_the_old_rules(conn: sqlite3.Connection) -> None:
    head = _failed(conn)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.ACCEPTED, at=NOW + 1)], NOW + 1)  # an older bridge
    assert ops.get(conn, "i1").state is State.FAILED
    assert _heard(conn, head) == []


def test_an_ops_retry_here_after_a_retry_at_the_bridge_is_a_newer_attempt_still(conn: sqlite3.Connection) -> None:
    _failed(conn)
    _tx(conn, forward_ops.apply_acks, [Ack("i1", AckState.FAILED, "x", "", NOW + 1, attempt=2)], NOW + 1)
    row = _tx(conn, ops.retry, "i1", NOW + 2)
    assert (row.state, row.attempt) == (State.ACCEPTED, 3)  # type: ignore[attr-defined]


def test_a_resent_result_of_the_old_attempt_does_not_end_the_new_one(conn: sqlite3.Connection) -> None:
    _failed(conn)
    _tx(conn, ops.retry, "i1", NOW + 1)  # attempt 2, not sent yet
    seen = event_log.last_event_seq(conn)
    # The bridge resends the first attempt's unconfirmed failure on connect: it speaks of attempt 1.
    applied = _tx(
        conn, forward_ops.apply_acks, [Ack("i1", AckState.FAILED, "smtp_550", "550", NOW + 2, attempt=1)], NOW + 2
    )
    assert applied.final_ids == ["i1"]  # type: ignore[attr-defined]  # confirmed: the bridge may stop resending
    row = ops.get(conn, "i1")
    assert (row.state, row.attempt) == (State.ACCEPTED, 2)
    assert event_log.last_event_seq(conn) == seen
