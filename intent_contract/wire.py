"""The wire contract between edge and bridge in one place: topics, protocol version and shared limits.

Both sides size their flow control by these numbers, so each is written once, here;
tests/unit/test_wire.py holds them consistent with each other (a batch fits the decoder, the edge's
batches in flight fit the bridge's queue). The codec (intent_contract.codec) encodes and decodes
the messages; the forwarder (edge) and the listener and service (bridge) move them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from intent_contract.names import is_name

# The version both sides send. The codec decodes by version and answers a batch of a version it has
# no decoder for with `unsupported_version` rejections (docs/wire.md), so an edge speaking another
# version is told instead of resending forever.
WIRE_VERSION: Final = 1

# Topics: `devices/{device_id}/{leaf}`. A device publishes only to its own DEVICE_PUBLISHES and
# subscribes only to its own DEVICE_RECEIVES (the bridge's ACL, topic_acl.topic_allowed).
TOPIC_ROOT: Final = "devices"
INTENTS: Final = "intents"  # edge -> bridge: batches of envelopes
ACKS: Final = "acks"  # bridge -> edge: accepted, then final results
CONFIRMS: Final = "confirms"  # edge -> bridge: final results the edge has applied
HEALTH: Final = "health"  # edge -> bridge: a summary of the outbox, on connect and periodically
DIAGNOSE: Final = "diagnose"  # bridge -> edge: a request for a diagnosis
DIAGNOSIS: Final = "diagnosis"  # edge -> bridge: the answer to a diagnose request
DEVICE_PUBLISHES: Final = frozenset({INTENTS, CONFIRMS, HEALTH, DIAGNOSIS})
DEVICE_RECEIVES: Final = frozenset({ACKS, DIAGNOSE})
UNSUPPORTED_VERSION: Final = "unsupported_version"  # the ack code for a batch of a version not spoken


def device_topic(device_id: str, leaf: str) -> str:
    """`devices/{device_id}/{leaf}`."""
    return f"{TOPIC_ROOT}/{device_id}/{leaf}"


def split_device_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, leaf) of a `devices/{id}/{leaf}` topic, or None."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or not is_name(parts[1]):
        return None
    return parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds every decoder enforces before and while it unpacks."""

    max_bytes: int = 1 << 20
    max_items: int = 5000
    max_depth: int = 32
    max_str: int = 256 * 1024
    max_map: int = 1000


DEFAULT_LIMITS: Final = Limits()

# Flow control. The bridge queues at most DEVICE_QUEUE_MESSAGES (and DEVICE_QUEUE_BYTES) per device,
# confirms included, and drops what does not fit (the edge resends after its ack timeout). The edge
# keeps at most BATCHES_IN_FLIGHT batch messages unacknowledged, well under that: with 4 a drain
# waited on round trips, 4,400 -> 8,200 intents/s accepted at 8 (bench/findings.md F10).
DEVICE_QUEUE_MESSAGES: Final = 64
DEVICE_QUEUE_BYTES: Final = 16 << 20
BATCHES_IN_FLIGHT: Final = 8
# An edge batch: at most this many intents and this many bytes of (JSON) payload, so that it stays
# under DEFAULT_LIMITS.max_bytes once encoded.
BATCH_ITEMS: Final = 500
BATCH_PAYLOAD_BYTES: Final = 512 * 1024
# Characters of an ack's detail (longer ones are cut by whoever makes the ack).
MAX_DETAIL: Final = 1000
MAX_CODE: Final = 64  # characters of an ack's code, a snake_case word such as smtp_550
MAX_ATTEMPT: Final = 1_000_000  # the envelope schema's bound on `attempt`; an ack's is checked against it
MAX_TIME: Final = 2**53 - 1  # the envelope schema's bound on times (ms); an ack's `at` is checked against it
# Acks per message from the bridge: 200 acks of at most ~1.1 KiB stay well under the edge's decode limit.
ACKS_PER_MESSAGE: Final = 200
# Ids per confirms message from the edge: as many as the bridge's decoder takes.
CONFIRMS_PER_MESSAGE: Final = DEFAULT_LIMITS.max_items

# Health reports, diagnose requests and diagnoses (intent_contract.device_wire) are small: a report is
# about 1 KiB. Their decoder refuses more than this, and the edge keeps what it sends well under it
# (tests/unit/test_device_wire.py: a diagnosis with every list full still fits).
REPORT_LIMITS: Final = Limits(max_bytes=64 * 1024, max_items=64, max_depth=4, max_str=2048, max_map=32)
# A diagnosis carries at most this many recent errors and failing (kind, code) pairs.
DIAGNOSIS_ERRORS: Final = 20
DIAGNOSIS_FAILING: Final = 10
# ... and at most this many forwarding windows: an edge with more sends the first ones and "+N more" last.
DIAGNOSIS_WINDOWS: Final = 24
# Characters of an error's detail in a report (longer ones are cut by the edge).
REPORT_DETAIL: Final = 300
