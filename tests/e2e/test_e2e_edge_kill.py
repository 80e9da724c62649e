"""The edge SIGKILLed again and again while it drains a backlog into a live bridge; each intent runs once,
and an app listening with a persistent session receives every intent's statuses through it all."""

from __future__ import annotations

import random
import time

import pytest

from tests.support.edge import Client
from tests.support.net import wait_until
from tests.support.stack import STATUS_TOPIC, Stack, assert_exactly_once, ids

COUNT = 3000
KILLS = 6
STOPS = 2  # graceful restarts (SIGTERM) between the kills, which lost statuses too


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_edge_sigkilled_during_drain_delivers_each_intent_once(stack: Stack) -> None:
    # Take the backlog in while the bridge is down, so the drain starts with all of it queued.
    assert stack.bridge.stop() == 0, stack.bridge.log()
    edge = stack.start_edge()
    # A separate app listens for statuses with a persistent session, as an app that must not miss one
    # would; paho reconnects it by itself after every restart of the edge.
    listener = Client(stack.edge_port, "status-listener", clean=False).connect()
    stack.apps.append(listener)
    listener.subscribe(STATUS_TOPIC)
    app = stack.app("kill-app", subscribe=False)
    intent_ids = ids("ekill", COUNT)
    acked = stack.publish_all(app, intent_ids)
    assert len(acked) == COUNT
    app.close()
    stack.apps.remove(app)
    # The provider takes 0.1 s a message (16 at once: at most 160/s, the drain >= 19 s), so that the drain
    # outlasts the restarts however fast the machine: the edge takes the backlog to the bridge in well under
    # a second, and a restart of the edge under load took long enough for the bridge to finish what the
    # later kills were meant to interrupt (a loaded run counted 3 of 6 kills during the drain).
    stack.sink.delay_s = 0.1
    stack.bridge.start()

    rng = random.Random()
    kills_during_drain = 0
    restarts = KILLS + STOPS
    try:
        for n in range(1, restarts + 1):
            # Restart at a point in the drain picked by progress at the sink, not by the clock.
            target = n * COUNT // (restarts + 2)
            wait_until(lambda t=target: stack.sink.total() >= t, 120, interval=0.02, what=f"sink at {target}")
            time.sleep(rng.uniform(0, 0.2))
            graceful = n % 4 == 0
            states = stack.edge_states()
            if not graceful and any(s != "delivered" for s in states.values()):
                kills_during_drain += 1
            if graceful:
                assert edge.stop() == 0, edge.log()[-3000:]
            else:
                edge.kill()
            edge.start()
        stack.wait_delivered(intent_ids, timeout=240, what="delivery after the last restart")
        wanted = set(intent_ids)
        wait_until(lambda: wanted <= listener.ids_with("delivered"), 60, interval=0.2, what="every final status")
    except TimeoutError:
        print(stack.diagnostics())
        missing = wanted - listener.ids_with("delivered") if "wanted" in locals() else set()
        print(f"{len(missing)} final statuses missing at the app, e.g. {sorted(missing)[:5]}")
        raise
    assert kills_during_drain >= 5, f"only {kills_during_drain} kills hit the drain: the test proves too little"
    assert_exactly_once(acked, stack.sink, stack.edge_states())
    missing = sorted(wanted - listener.ids_with("accepted"))
    assert not missing, f"{len(missing)} `accepted` statuses missing at the app, e.g. {missing[:5]}"
    print(
        f"edge kill: {COUNT} intents, {kills_during_drain} SIGKILLs and {STOPS} SIGTERMs of the edge during the"
        " drain, 0 lost, 0 twice, every status at the listening app"
    )
