"""The edge SIGKILLed again and again while it drains a backlog into a live bridge; each intent runs once."""

from __future__ import annotations

import random
import time

import pytest

from tests.e2e.harness import Stack, assert_exactly_once, ids
from tests.helpers import wait_until

COUNT = 3000
KILLS = 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_edge_sigkilled_during_drain_delivers_each_intent_once(stack: Stack) -> None:
    # Take the backlog in while the bridge is down, so the drain starts with all of it queued.
    assert stack.bridge.stop() == 0, stack.bridge.log()
    edge = stack.start_edge()
    app = stack.app("kill-app", subscribe=False)
    intent_ids = ids("ekill", COUNT)
    acked = stack.publish_all(app, intent_ids)
    assert len(acked) == COUNT
    app.close()
    stack.apps.remove(app)
    stack.bridge.start()

    rng = random.Random()
    kills_during_drain = 0
    try:
        for n in range(1, KILLS + 1):
            # Kill at a point in the drain picked by progress at the sink, not by the clock.
            target = n * COUNT // (KILLS + 2)
            wait_until(lambda t=target: stack.sink.total() >= t, 120, interval=0.02, what=f"sink at {target}")
            time.sleep(rng.uniform(0, 0.2))
            states = stack.edge_states()
            if any(s != "delivered" for s in states.values()):
                kills_during_drain += 1
            edge.kill()
            edge.start()
        stack.wait_delivered(intent_ids, timeout=240, what="delivery after the last restart")
    except TimeoutError:
        print(stack.diagnostics())
        raise
    assert kills_during_drain >= 5, f"only {kills_during_drain} kills hit the drain: the test proves too little"
    assert_exactly_once(acked, stack.sink, stack.edge_states())
    print(f"edge kill: {COUNT} intents, {kills_during_drain} SIGKILLs of the edge during the drain, 0 lost, 0 twice")
