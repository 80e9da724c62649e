"""The msgpack wire codec between edge and bridge, with size, length and depth limits on decode.

Batches (edge -> bridge) carry envelopes; acks (bridge -> edge) carry results; confirms (edge ->
bridge) name the final results the edge has applied, so the bridge may stop re-sending them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from intent_contract.errors import DecodeError, SchemaViolationError
from intent_contract.names import is_name
from intent_contract.schemas import validate

WIRE_VERSION = 1


class AckState(StrEnum):
    """States the bridge reports for an intent."""

    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self is not AckState.ACCEPTED


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds every decoder enforces before and while it unpacks."""

    max_bytes: int = 1 << 20
    max_items: int = 5000
    max_depth: int = 32
    max_str: int = 256 * 1024
    max_map: int = 1000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One intent on the wire."""

    id: str
    app: str
    kind: str
    created: int
    expires: int | None
    attempt: int
    payload: dict[str, Any]
    priority: int = 0

    def to_wire(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies the payload: 13% of the edge's time in a drain.
        return {
            "id": self.id,
            "app": self.app,
            "kind": self.kind,
            "created": self.created,
            "expires": self.expires,
            "attempt": self.attempt,
            "payload": self.payload,
            "priority": self.priority,
        }


@dataclass(frozen=True, slots=True)
class Ack:
    """The bridge's word on one intent."""

    id: str
    state: AckState
    code: str = ""
    detail: str = ""
    at: int = 0
    app: str = field(default="")

    def __post_init__(self) -> None:
        if not is_name(self.id):
            raise ValueError(f"bad ack id {self.id!r}")
        if len(self.detail) > 1000:
            raise ValueError("ack detail over 1000 characters")

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "state": str(self.state),
            "code": self.code,
            "detail": self.detail,
            "at": self.at,
        }
        if self.app:
            wire["app"] = self.app
        return wire


def _pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _unpack(data: bytes, limits: Limits) -> Any:
    if len(data) > limits.max_bytes:
        raise DecodeError(f"message of {len(data)} bytes is over the {limits.max_bytes}-byte limit", data)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_str,
            max_array_len=limits.max_items,
            max_map_len=limits.max_map,
            max_ext_len=0,
        )
    except ValueError as exc:  # ExtraData, FormatError, StackError and bad UTF-8 are ValueErrors
        raise DecodeError(f"not a valid msgpack message: {exc}", data, exc) from exc
    _check_depth(obj, limits.max_depth, data)
    return obj


def _check_depth(obj: object, max_depth: int, data: bytes) -> None:
    # Level by level, looking only at containers (msgpack makes plain dicts and lists): 4x faster
    # than walking every value, and this runs over every batch the bridge receives.
    level: list[Any] = [obj] if type(obj) is dict or type(obj) is list else []
    depth = 1
    while level:
        if depth > max_depth:
            raise DecodeError(f"message nested deeper than {max_depth} levels", data)
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below += [child for child in children if type(child) is dict or type(child) is list]
        level = below
        depth += 1


def _versioned(obj: Any, key: str, data: bytes) -> list[Any]:
    if not isinstance(obj, dict) or obj.get("v") != WIRE_VERSION or not isinstance(obj.get(key), list):
        raise DecodeError(f"expected {{'v': {WIRE_VERSION}, '{key}': [...]}}", data)
    items: list[Any] = obj[key]
    return items


def encode_batch(envelopes: list[Envelope]) -> bytes:
    """The msgpack batch for `devices/{id}/intents`."""
    return _pack({"v": WIRE_VERSION, "items": [e.to_wire() for e in envelopes]})


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Envelopes that passed validation, and (id or index, code, detail) for those that did not."""

    envelopes: list[Envelope]
    invalid: list[tuple[str, str, str]]


def decode_batch(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedBatch:
    """Decode a batch; a bad envelope is reported in `invalid`, a bad batch raises DecodeError."""
    items = _versioned(_unpack(data, limits), "items", data)
    envelopes: list[Envelope] = []
    invalid: list[tuple[str, str, str]] = []
    for index, item in enumerate(items):
        ident = item.get("id") if isinstance(item, dict) and is_name(item.get("id")) else f"#{index}"
        try:
            validate("envelope", item)
            validate(item["kind"], item["payload"])
        except SchemaViolationError as exc:
            invalid.append((str(ident), exc.code, exc.detail))
            continue
        envelopes.append(Envelope(**item))
    return DecodedBatch(envelopes, invalid)


def encode_acks(acks: list[Ack]) -> bytes:
    """The msgpack message for `devices/{id}/acks`."""
    return _pack({"v": WIRE_VERSION, "acks": [a.to_wire() for a in acks]})


def decode_acks(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Ack]:
    """Decode an acks message; raises DecodeError on any malformed entry."""
    acks = []
    for item in _versioned(_unpack(data, limits), "acks", data):
        try:
            acks.append(
                Ack(
                    id=item["id"],
                    state=AckState(item["state"]),
                    code=str(item.get("code", "")),
                    detail=str(item.get("detail", "")),
                    at=int(item.get("at", 0)),
                    app=str(item.get("app", "")),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DecodeError(f"bad ack entry: {exc}", data, exc) from exc
    return acks


def encode_confirms(ids: list[str]) -> bytes:
    """The msgpack message for `devices/{id}/confirms`: final results the edge has applied."""
    return _pack({"v": WIRE_VERSION, "ids": ids})


def decode_confirms(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Decode a confirms message; every entry must be a valid id."""
    ids = _versioned(_unpack(data, limits), "ids", data)
    if not all(is_name(i) for i in ids):
        raise DecodeError("confirms carry an invalid id", data)
    return [str(i) for i in ids]
