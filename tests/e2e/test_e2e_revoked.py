"""A device revoked while its edge holds a backlog: nothing of it runs, every intent ends failed/device_revoked."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support.edge import Client, cli
from tests.support.net import wait_until
from tests.support.stack import FINAL_EDGE_STATES, Stack, ids

BACKLOG = 300
LATE = 20


def final_statuses(app: Client, intent_ids: list[str]) -> dict[str, dict[str, Any]]:
    """id -> the last status the app received for it."""
    wanted = set(intent_ids)
    last: dict[str, dict[str, Any]] = {}
    for _topic, status in list(app.statuses):
        if status["id"] in wanted:
            last[status["id"]] = status
    return last


def all_revoked(app: Client, intent_ids: list[str]) -> bool:
    last = final_statuses(app, intent_ids)
    return len(last) == len(intent_ids) and all(s["state"] == "failed" for s in last.values())


@pytest.mark.timeout(300)
def test_revoked_device_backlog_is_never_executed_and_each_intent_fails_visibly(stack: Stack) -> None:
    stack.start_edge()
    app = stack.app("rev-app")
    try:
        warm = stack.publish_all(app, ["rev-warm"])
        wait_until(lambda: "delivered" in app.status_of("rev-warm"), 60, 0.2, what="warm-up delivered")

        # The bridge becomes unreachable; a backlog builds up; the operator revokes the device meanwhile.
        assert stack.bridge.stop() == 0, stack.bridge.log()
        backlog = ids("rev", BACKLOG)
        acked = stack.publish_all(app, backlog)
        assert acked == set(backlog)
        stack.bridge.cli("devices", "revoke", stack.device_id)
        stack.bridge.start()
        wait_until(lambda: all_revoked(app, backlog), 120, 0.5, what="failed statuses for the backlog")

        # Intents taken in after the edge learned of the revocation end the same way.
        late = ids("late", LATE)
        assert stack.publish_all(app, late) == set(late)
        wait_until(lambda: all_revoked(app, late), 60, 0.5, what="failed statuses for late intents")
        # A supervisor asking `edge-outbox status` hears that the device is revoked (exit 1).
        wait_until(lambda: cli(stack.edge_dir, "status").returncode == 1, 30, 0.5, what="status unhealthy")
        assert "unhealthy: this device was revoked" in cli(stack.edge_dir, "status").stdout
    except TimeoutError:
        print(stack.diagnostics())
        raise

    everything = backlog + late
    last = final_statuses(app, everything)
    assert {s["code"] for s in last.values()} == {"device_revoked"}
    assert all(s["detail"] for s in last.values()), "a failed status without a detail for people"
    states = stack.edge_states()
    assert all(states[i] == "failed" for i in everything)
    assert set(stack.sink.executions()) == warm, "a revoked device's intent was executed"
    admitted = {r["intent_id"] for r in stack.bridge.audit(stack.device_id) if r["intent_id"]}  # not refused connects
    assert admitted <= warm, f"the bridge admitted intents of a revoked device: {sorted(admitted - warm)[:5]}"
    assert "revoked" in (stack.edge.log() if stack.edge else "")


LIVE = 2000


@pytest.mark.timeout(300)
def test_revoking_a_device_mid_drain_stops_its_queued_work_at_the_bridge(stack: Stack) -> None:
    stack.start_edge()
    app = stack.app("live-app")
    intent_ids = ids("live", LIVE)
    acked = stack.publish_all(app, intent_ids)
    try:
        # Revoke while the bridge holds a queue of this device's admitted intents.
        wait_until(lambda: stack.sink.total() >= 200, 120, 0.02, what="the drain under way")
        stack.bridge.cli("devices", "revoke", stack.device_id)
        wait_until(
            lambda: all(s in FINAL_EDGE_STATES for s in stack.edge_states().values()), 120, 0.5, what="edge settled"
        )

        def bridge_idle() -> bool:
            events = stack.bridge.audit_events(stack.device_id)
            return events["accept"] == events["deliver"] + events["fail"]

        wait_until(bridge_idle, 60, 0.5, what="every admitted intent ended at the bridge")
    except TimeoutError:
        print(stack.diagnostics())
        raise
    records = stack.bridge.audit(stack.device_id)
    delivered_at_bridge = {r["intent_id"] for r in records if r["event"] == "deliver"}
    stopped = {r["intent_id"] for r in records if r["event"] == "fail" and r["code"] == "device_revoked"}
    executions = stack.sink.executions()
    assert stopped, "the bridge kept executing a revoked device's queued intents"
    assert set(executions) == delivered_at_bridge, "the sink and the bridge's audit disagree"
    assert all(n == 1 for n in executions.values())
    assert set(executions) <= acked
    states = stack.edge_states()
    told_delivered = {i for i in intent_ids if states[i] == "delivered"}
    assert told_delivered <= set(executions), "the app was told `delivered` for an intent never executed"
    assert all(states[i] == "failed" for i in stopped)
    # Results the bridge had not yet got to the edge when the link was dropped can no longer reach it:
    # the edge must say it cannot know (device_revoked_unknown), never that they did not run.
    codes = edge_codes(stack.edge_dir)
    unreported = set(executions) - told_delivered
    assert all(codes[i] == "device_revoked_unknown" for i in unreported)
    never_sent = {i for i in intent_ids if codes[i] == "device_revoked"}
    assert not never_sent & set(executions), "an intent reported as never sent was executed"
    print(
        f"revoke mid-drain: {len(executions)} executed, {len(stopped)} stopped at the bridge, "
        f"{len(unreported)} executed but unreported (edge: device_revoked_unknown), {len(never_sent)} never sent"
    )


def edge_codes(edge_dir: Path) -> dict[str, str]:
    conn = sqlite3.connect(edge_dir / "outbox.db")
    try:
        return dict(conn.execute("SELECT id, code FROM intents"))
    finally:
        conn.close()
