"""The devices' topic ACL: what each device may publish to, subscribe to and receive. Pure."""

from __future__ import annotations

from enum import StrEnum

from intent_contract.wire import DEVICE_PUBLISHES, DEVICE_RECEIVES, split_device_topic


class Access(StrEnum):
    """What a device asks to do with a topic."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


def topic_allowed(device_id: str | None, topic: str, access: Access) -> bool:
    """The ACL: publish to own intents, confirms, health, diagnosis; subscribe to and receive own acks and
    diagnose; nothing else (intent_contract.wire names both lists)."""
    if not device_id:
        return False
    split = split_device_topic(topic)
    if split is None or split[0] != device_id:
        return False
    if access is Access.PUBLISH:
        return split[1] in DEVICE_PUBLISHES
    return split[1] in DEVICE_RECEIVES  # subscribe / receive
