"""The link cut after the bridge accepted a batch but before its acks reached the edge.

A TCP proxy sits between the edge and the bridge's MQTT/TLS port. The edge's first batch goes through;
everything the bridge sends back (PUBACK, `accepted` acks, final results) is held; once the audit
shows the batch accepted, the connections are dropped and the held bytes thrown away. After
the link comes back, the edge resends the batch and the bridge must treat it as a duplicate.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.net import wait_until
from tests.support.stack import CutProxy, Stack, assert_exactly_once, ids, point_edge_at

COUNT = 300
HOLD_AFTER = 8192  # edge -> bridge bytes before the return path is held: past TLS setup, CONNECT, SUBSCRIBE


@pytest.mark.timeout(300)
def test_acks_lost_with_the_link_do_not_cause_a_second_execution(stack: Stack) -> None:
    proxy = stack.proxy = CutProxy(stack.bridge.mqtt_port).start()
    point_edge_at(stack.edge_dir, proxy.port)
    stack.start_edge()
    app = stack.app("cut-app")
    try:
        # The path through the proxy works end to end.
        warm = stack.publish_all(app, ["cut-warm"])
        wait_until(lambda: "delivered" in app.status_of("cut-warm"), 60, 0.2, what="warm-up delivered")

        proxy.cut()
        intent_ids = ids("cut", COUNT)
        acked = stack.publish_all(app, intent_ids)
        assert all(stack.edge_states()[i] == "accepted" for i in intent_ids)

        proxy.reopen(hold_after=HOLD_AFTER)

        def accepted_at_bridge() -> int:
            return sum(
                1
                for r in stack.bridge.audit(stack.device_id)
                if r["event"] == "accept" and r["intent_id"] != "cut-warm"
            )

        # The edge's first batch (sized to the link, edge_outbox/link_pace.py) waits for its PUBACK, held.
        wait_until(accepted_at_bridge, 90, 0.5, what="the first batch accepted at the bridge")
        first = accepted_at_bridge()
        assert proxy.held_bytes > 0
        states = stack.edge_states()
        assert all(states[i] == "accepted" for i in intent_ids), "an ack got through the held return path"
        proxy.cut()
        proxy.reopen()
        stack.wait_delivered(intent_ids, timeout=120, what="delivery after the link came back")
        wait_until(lambda: all("delivered" in app.status_of(i) for i in intent_ids), 60, 0.5, what="statuses")
    except TimeoutError:
        print(stack.diagnostics())
        raise
    assert_exactly_once(acked | warm, stack.sink, stack.edge_states())
    accepts = Counter(r["intent_id"] for r in stack.bridge.audit(stack.device_id) if r["event"] == "accept")
    assert all(accepts[i] == 1 for i in intent_ids), "a resent intent was admitted twice"
    print(
        f"link cut: {first} of {COUNT} intents accepted, acks dropped with the link, resent, executed once; "
        f"{proxy.held_bytes} bytes held and discarded, {proxy.connections} connections through the proxy"
    )
