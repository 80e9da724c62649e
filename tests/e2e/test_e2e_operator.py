"""Operators' retry and cancel end to end: a real bridge and a real edge, and the edge's app hears them.

An intent the provider refuses for good ends `failed` at the app; `cloud-bridge intents retry` (another
process: it reaches the running bridge only through the store) puts it back in the queue, and the app
hears `forwarded` (code `bridge_retry`), then `delivered` once the provider takes it. A second one is
retried while its edge is stopped: the edge hears it when it connects again. An intent the provider
keeps answering "try later" is cancelled while queued: the app hears `failed`/`cancelled`. What the
ledger does not allow (cancel a delivered intent, retry a queued one) is refused with exit 1.
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.edge import Client
from tests.support.fleet import bridge_command
from tests.support.net import wait_until
from tests.support.stack import STATUS_TOPIC, TENANT, Stack
from tests.support.stores import pg_database

REFUSE = "550 5.7.1 mailbox unavailable"
LATER = "451 4.3.0 try again later"


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[Stack]:
    """The e2e stack (bridge started, edge enrolled), retrying transient errors every 0-2 s for long."""
    with contextlib.ExitStack() as resources:
        store_args: tuple[str, ...] = ()
        if request.param == "postgresql":
            store_args = ("--store", str(resources.enter_context(pg_database())))
        stack = Stack(tmp_path, server_cert_files, store_args=store_args)
        resources.callback(stack.close)
        text = stack.bridge.config.read_text()
        text = text.replace(
            "retry_base = 0.1\nretry_cap = 1.0\n", "retry_base = 2.0\nretry_cap = 2.0\nmax_attempts = 1000\n"
        )
        stack.bridge.config.write_text(text)
        stack.bridge.start()
        stack.enroll()
        yield stack


def _statuses(app: Client, intent_id: str) -> list[tuple[str, str]]:
    with app._lock:  # the test client's own lock over what it heard
        return [(s["state"], s["code"]) for _t, s in app.statuses if s["id"] == intent_id]


def _heard(app: Client, intent_id: str, *wanted: tuple[str, str]) -> bool:
    """True when the app heard `wanted` in this order (other statuses may come between)."""
    heard = iter(_statuses(app, intent_id))
    return all(w in heard for w in wanted)


def _intents(stack: Stack, *args: str) -> Any:
    return json.loads(stack.bridge.cli("intents", *args, "--json"))


def test_retry_and_cancel_reach_the_edges_app_as_statuses(stack: Stack) -> None:
    sink = stack.sink
    for intent_id in ("refused-1", "refused-2"):
        sink.answer(intent_id, REFUSE)
    sink.answer("later-1", LATER)
    stack.start_edge()
    # A persistent session: the edge keeps its subscription and what it missed across the edge's restart.
    app = Client(stack.edge_port, "operator-app", clean=False, inflight=200).connect()
    stack.apps.append(app)
    app.subscribe(STATUS_TOPIC)
    stack.publish_all(app, ["refused-1", "refused-2", "ok-1", "later-1"])
    stack.wait_delivered(["ok-1"], 60)
    for intent_id in ("refused-1", "refused-2"):
        wait_until(lambda i=intent_id: _heard(app, i, ("failed", "smtp_550")), 60, 0.2, what=f"{intent_id} failed")

    # The operator sees the device's backlog in the ledger.
    listed = {r["intent_id"]: r for r in _intents(stack, "ls", "--device", stack.device_id)}
    assert listed["refused-1"]["state"] == "failed" and listed["refused-1"]["retryable"]
    assert listed["ok-1"]["state"] == "delivered" and not listed["ok-1"]["retryable"]
    failed = _intents(stack, "ls", "--tenant", TENANT, "--state", "failed")
    assert {r["intent_id"] for r in failed} == {"refused-1", "refused-2"}

    # Retry while the edge is connected: the app hears it runs again before any result (the provider now
    # says "later"), then its result.
    sink.answer("refused-1", LATER)
    done = _intents(stack, "retry", stack.device_id, "refused-1", "--operator", "alice")
    assert (done["intent"]["state"], done["intent"]["attempt"], done["operator"]) == ("queued", 2, "alice")
    wait_until(
        lambda: _heard(app, "refused-1", ("failed", "smtp_550"), ("forwarded", "bridge_retry")),
        60, 0.2, what="the retried intent's `forwarded` at the app",
    )  # fmt: skip
    assert stack.edge_states()["refused-1"] == "forwarded"
    sink.answer("refused-1", None)
    wait_until(
        lambda: _heard(app, "refused-1", ("forwarded", "bridge_retry"), ("delivered", "")),
        60, 0.2, what="the retried intent's result at the app",
    )  # fmt: skip
    assert sink.executions()["refused-1"] == 1 and len(sink.message_ids()["refused-1"]) == 1
    assert stack.edge_states()["refused-1"] == "delivered"

    # Retry while the edge is away: it hears it when it connects again.
    assert stack.edge is not None
    stack.edge.stop()
    sink.answer("refused-2", None)
    _intents(stack, "retry", "refused-2", "--operator", "alice")  # the id alone: it is unique
    wait_until(lambda: sink.executions()["refused-2"] == 1, 60, 0.2, what="the retried intent's delivery")
    stack.start_edge()
    wait_until(
        lambda: _heard(app, "refused-2", ("forwarded", "bridge_retry"), ("delivered", "")),
        60, 0.2, what="the statuses of the intent retried while its edge was away",
    )  # fmt: skip

    # Cancel an intent that waits between tries (one whose call is under way is refused: try until it is not).
    wait_until(lambda: sink.refusals("later-1") >= 1, 60, 0.2, what="a first try of later-1")

    def cancelled() -> bool:
        result = bridge_command(stack.bridge, "intents", "cancel", stack.device_id, "later-1", "--operator", "bob")
        assert result.returncode == 0 or "under way" in result.stderr, result.stderr
        return result.returncode == 0

    wait_until(cancelled, 60, 0.2, what="a cancel between two tries")
    wait_until(lambda: _heard(app, "later-1", ("failed", "cancelled")), 60, 0.2, what="the cancel at the app")
    assert stack.edge_states()["later-1"] == "failed"

    # What the table does not allow is refused, exit 1, nothing changed.
    refused = bridge_command(stack.bridge, "intents", "cancel", stack.device_id, "ok-1")
    assert refused.returncode == 1 and "cannot cancel an intent that is delivered" in refused.stderr
    assert "Traceback" not in refused.stderr
    shown = _intents(stack, "show", stack.device_id, "ok-1")
    assert shown["state"] == "delivered"

    events = [(r["intent_id"], r["event"], r["detail"]) for r in stack.bridge.audit(stack.device_id)]
    assert ("refused-1", "requeue", "retried by operator alice") in events
    # Cancelled between two tries: the detail says how the last ended (a relay's 451 is an answer).
    assert ("later-1", "cancel", "cancelled by operator bob; its last try ended smtp_451") in events
