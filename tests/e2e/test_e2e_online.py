"""Online: a steady stream through a live link; every intent executed once and its status back at the app."""

from __future__ import annotations

import time

import pytest

from tests.support.net import wait_until
from tests.support.stack import Stack, assert_exactly_once, ids

COUNT = 1000


@pytest.mark.timeout(300)
def test_online_1000_intents_delivered_once_with_statuses(stack: Stack) -> None:
    stack.start_edge()
    app = stack.app()
    intent_ids = ids("online", COUNT)
    started = time.monotonic()
    acked = stack.publish_all(app, intent_ids)
    assert len(acked) == COUNT
    try:
        stack.wait_delivered(intent_ids, timeout=180)
        wait_until(lambda: all("delivered" in app.status_of(i) for i in intent_ids), 60, interval=0.5, what="statuses")
    except TimeoutError:
        print(stack.diagnostics())
        raise
    elapsed = time.monotonic() - started
    assert_exactly_once(acked, stack.sink, stack.edge_states())
    missing = [i for i in intent_ids if "delivered" not in app.status_of(i)]
    assert not missing, f"{len(missing)} `delivered` statuses never reached the app, e.g. {missing[:5]}"
    print(f"online: {COUNT} intents published, acked, executed once and reported in {elapsed:.1f}s")
