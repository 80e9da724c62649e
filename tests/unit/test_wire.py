"""The wire contract's shared numbers hold together: what one side may send, the other can decode and queue."""

from __future__ import annotations

import json

import pytest

from intent_contract.codec import Ack, AckState, Envelope, encode_acks, encode_batch, encode_confirms
from intent_contract.wire import (
    ACKS_PER_MESSAGE,
    BATCH_ITEMS,
    BATCH_PAYLOAD_BYTES,
    BATCHES_IN_FLIGHT,
    CONFIRMS_PER_MESSAGE,
    DEFAULT_LIMITS,
    DEVICE_QUEUE_BYTES,
    DEVICE_QUEUE_MESSAGES,
    MAX_DETAIL,
    device_topic,
    split_device_topic,
)

LONGEST_NAME = "n" * 64  # names are at most 64 characters (intent_contract.names)


def names(count: int) -> list[str]:
    return [f"{n:064d}" for n in range(count)]


def test_a_full_batch_fits_the_decoder() -> None:
    # The edge counts a batch's payload in stored JSON bytes; msgpack of a string is no larger.
    text = "x" * (BATCH_PAYLOAD_BYTES // BATCH_ITEMS - len(json.dumps({"text": ""})))
    envelopes = [
        Envelope(ident, LONGEST_NAME, "email.send", 2**47, 2**47, 1_000_000, {"text": text}, 9)
        for ident in names(BATCH_ITEMS)
    ]
    assert sum(len(json.dumps(e.payload)) for e in envelopes) <= BATCH_PAYLOAD_BYTES
    assert DEFAULT_LIMITS.max_items >= BATCH_ITEMS
    assert len(encode_batch(envelopes)) < DEFAULT_LIMITS.max_bytes


def test_a_full_acks_message_fits_the_decoder() -> None:
    detail = "\U0001f525" * MAX_DETAIL  # four bytes a character in UTF-8
    acks = [Ack(ident, AckState.FAILED, "c" * 64, detail, 2**47, LONGEST_NAME) for ident in names(ACKS_PER_MESSAGE)]
    assert DEFAULT_LIMITS.max_items >= ACKS_PER_MESSAGE
    assert len(encode_acks(acks)) < DEFAULT_LIMITS.max_bytes


def test_a_full_confirms_message_fits_the_decoder() -> None:
    assert DEFAULT_LIMITS.max_items >= CONFIRMS_PER_MESSAGE
    assert len(encode_confirms(names(CONFIRMS_PER_MESSAGE))) < DEFAULT_LIMITS.max_bytes


def test_the_edges_batches_in_flight_fit_the_bridges_queue_with_room_for_confirms() -> None:
    assert 2 * BATCHES_IN_FLIGHT <= DEVICE_QUEUE_MESSAGES
    assert 2 * BATCHES_IN_FLIGHT * DEFAULT_LIMITS.max_bytes <= DEVICE_QUEUE_BYTES


def test_device_topics() -> None:
    assert device_topic("dev-1", "acks") == "devices/dev-1/acks"
    assert split_device_topic("devices/dev-1/intents") == ("dev-1", "intents")


@pytest.mark.parametrize("topic", ["devices/dev-1", "devices/dev 1/acks", "other/dev-1/acks", "devices/a/b/c", ""])
def test_other_topics_are_not_device_topics(topic: str) -> None:
    assert split_device_topic(topic) is None
