"""The devices' topic ACL: each device its own topics, in the direction the wire contract gives them."""

from __future__ import annotations

from cloud_bridge.topic_acl import Access, topic_allowed
from intent_contract.wire import ACKS, CONFIRMS, DIAGNOSE, DIAGNOSIS, HEALTH, INTENTS, device_topic


def test_the_acl_lets_a_device_report_only_its_own_health_and_hear_only_its_own_diagnose_requests() -> None:
    own, other = "dev-1", "dev-2"
    for leaf in (INTENTS, CONFIRMS, HEALTH, DIAGNOSIS):
        assert topic_allowed(own, device_topic(own, leaf), Access.PUBLISH)
        assert not topic_allowed(own, device_topic(other, leaf), Access.PUBLISH)
        assert not topic_allowed(own, device_topic(own, leaf), Access.SUBSCRIBE)
    for leaf in (ACKS, DIAGNOSE):
        assert not topic_allowed(own, device_topic(own, leaf), Access.PUBLISH)
        for access in (Access.SUBSCRIBE, Access.RECEIVE):
            assert topic_allowed(own, device_topic(own, leaf), access)
            assert not topic_allowed(own, device_topic(other, leaf), access)
    assert not topic_allowed(own, f"devices/{own}/#", Access.SUBSCRIBE)
    assert not topic_allowed(None, device_topic(own, HEALTH), Access.PUBLISH)
