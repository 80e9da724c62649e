"""Attach mode's packet ids: a status never takes the id of one of our SUBSCRIBEs, which may await its SUBACK."""

from __future__ import annotations

from typing import Any, cast

from edge_outbox import attach, attach_drops
from edge_outbox.attach_link import SUBSCRIBE_IDS, Link
from edge_outbox.mqtt.session import MAX_PACKET_ID


def test_statuses_take_no_id_of_a_subscribe_and_wrap_around_past_them() -> None:
    assert {attach.SUBSCRIBE_ID, attach_drops.DROPS_SUBSCRIBE_ID} == set(range(1, SUBSCRIBE_IDS + 1))
    link = Link(cast(Any, None), cast(Any, None))
    assert [link.new_id() for _ in range(3)] == [3, 4, 5]  # a connection's first statuses took 1 and 2
    link.statuses[6] = 1  # in flight
    assert link.new_id() == 7
    link.next_id = MAX_PACKET_ID - 1
    assert [link.new_id() for _ in range(3)] == [MAX_PACKET_ID, 3, 4]
