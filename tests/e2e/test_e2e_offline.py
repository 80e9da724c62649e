"""Offline: the bridge is down while 10,000 intents are taken in; when it comes up, each runs exactly once."""

from __future__ import annotations

import time

import pytest

from tests.support.stack import Stack, assert_exactly_once, ids

COUNT = 10_000


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_offline_backlog_of_10000_drains_exactly_once(stack: Stack) -> None:
    assert stack.bridge.stop() == 0, stack.bridge.log()
    stack.start_edge()
    app = stack.app(subscribe=False)
    intent_ids = ids("offline", COUNT)
    acked = stack.publish_all(app, intent_ids, timeout=240)
    assert len(acked) == COUNT
    states = stack.edge_states()
    assert all(states[i] == "accepted" for i in intent_ids), "something was forwarded while the bridge was down"
    assert stack.sink.total() == 0

    started = time.monotonic()
    stack.bridge.start()
    try:
        stack.wait_delivered(intent_ids, timeout=400, what=f"delivery of the {COUNT} backlog")
    except TimeoutError:
        print(stack.diagnostics())
        raise
    elapsed = time.monotonic() - started
    assert_exactly_once(acked, stack.sink, stack.edge_states())
    print(f"offline: {COUNT} intents acked while the bridge was down, drained exactly once in {elapsed:.1f}s")
