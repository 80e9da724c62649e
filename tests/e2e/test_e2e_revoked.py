"""A device revoked while its edge holds a backlog: nothing of it runs, every intent ends failed/device_revoked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import Stack, ids
from tests.edge_harness import Client
from tests.helpers import wait_until

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
    admitted = {r["intent_id"] for r in stack.bridge.audit(stack.device_id)}
    assert admitted <= warm, f"the bridge admitted intents of a revoked device: {sorted(admitted - warm)[:5]}"
    assert "revoked" in (stack.edge.log() if stack.edge else "")
