"""The msgpack wire codec between edge and bridge, with size, length and depth limits on decode.

Batches (edge -> bridge) carry envelopes; acks (bridge -> edge) carry results; confirms (edge ->
bridge) name the final results the edge has applied, so the bridge may stop re-sending them.
Decoding is keyed by the message's version `v`: a well-formed message of a version with no decoder
here raises UnsupportedVersionError, which keeps the ids it could still read (see `refuse_version`).
Topics, the version sent and the limits are in intent_contract.wire.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import msgpack

from intent_contract.envelope import (
    Envelope,  # the codec's users import it from here too
    typed_batch,
)
from intent_contract.errors import DecodeError, SchemaViolationError, UnsupportedVersionError
from intent_contract.names import KINDS, is_name
from intent_contract.readable import readable
from intent_contract.schemas import validate
from intent_contract.wire import (
    DEFAULT_LIMITS,
    MAX_ATTEMPT,
    MAX_CODE,
    MAX_DETAIL,
    MAX_TIME,
    UNSUPPORTED_VERSION,
    WIRE_VERSION,
    Limits,
)

T = TypeVar("T")


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
class Ack:
    """The bridge's word on one intent."""

    id: str
    state: AckState
    code: str = ""
    detail: str = ""
    at: int = 0
    app: str = field(default="")
    # The bridge's attempt of the row (optional on the wire; 0: not said, as from older bridges). An edge
    # ignores an ack for an attempt older than its own, and takes a newer one as a retry at the bridge.
    attempt: int = 0

    def __post_init__(self) -> None:
        if not is_name(self.id):
            raise ValueError(f"bad ack id {self.id!r}")
        if self.attempt < 0:
            raise ValueError("ack attempt cannot be negative")
        if len(self.detail) > MAX_DETAIL:
            raise ValueError(f"ack detail over {MAX_DETAIL} characters")
        if len(self.code) > MAX_CODE:
            raise ValueError(f"ack code over {MAX_CODE} characters")

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
        if self.attempt:
            wire["attempt"] = self.attempt
        return wire


def pack(obj: object) -> bytes:
    """msgpack with bin types (what every wire message is)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes, limits: Limits) -> Any:
    """msgpack within `limits` (size, lengths, depth); DecodeError otherwise."""
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
    check_depth(obj, limits.max_depth, data)
    return obj


def check_depth(obj: object, max_depth: int, data: bytes) -> None:
    """DecodeError when containers nest deeper than `max_depth` (also used for JSON: json makes the same types)."""
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


def _body(obj: Any, key: str, data: bytes, decoders: Mapping[int, Callable[[list[Any], bytes], T]]) -> T:
    """Run the decoder for the message's version on its `key` list."""
    version = obj.get("v") if isinstance(obj, dict) else None
    if type(version) is not int:  # not isinstance: True would pass for 1
        raise DecodeError(f"expected {{'v': <version>, '{key}': [...]}}", data)
    decoder = decoders.get(version)
    if decoder is None:
        raise UnsupportedVersionError(version, sorted(decoders), _readable_ids(obj.get(key)), data)
    items = obj.get(key)
    if not isinstance(items, list):
        raise DecodeError(f"expected {{'v': {version}, '{key}': [...]}}", data)
    return decoder(items, data)


def _readable_ids(items: object) -> list[str]:
    """The valid ids of the entries of a message we cannot otherwise read, so they can be answered."""
    if not isinstance(items, list):
        return []
    return [item["id"] for item in items if isinstance(item, dict) and is_name(item.get("id"))]


def encode_batch(envelopes: list[Envelope]) -> bytes:
    """The msgpack batch for `devices/{id}/intents`."""
    return pack({"v": WIRE_VERSION, "items": [e.to_wire() for e in envelopes]})


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """Envelopes that passed validation, and (id or index, code, detail, kind) for those that did not; the
    kind is the envelope's when it names a known one, else "" (the bridge counts the refusal in usage under
    it, as the audit records it)."""

    envelopes: list[Envelope]
    invalid: list[tuple[str, str, str, str]]


def _batch_v1(items: list[Any], _data: bytes) -> DecodedBatch:
    envelopes: list[Envelope] = []
    invalid: list[tuple[str, str, str, str]] = []
    for index, item in enumerate(items):
        ident = item.get("id") if isinstance(item, dict) and is_name(item.get("id")) else f"#{index}"
        kind = item.get("kind") if isinstance(item, dict) and item.get("kind") in KINDS else ""
        try:
            validate("envelope", item)
            _integers(item)
            validate(item["kind"], item["payload"])
        except SchemaViolationError as exc:
            invalid.append((str(ident), exc.code, exc.detail, str(kind)))
            continue
        envelopes.append(Envelope(**item))
    return DecodedBatch(envelopes, invalid)


_ENVELOPE_INTEGERS = ("created", "expires", "attempt", "priority")


def _integers(item: dict[str, Any]) -> None:
    """JSON Schema's "integer" takes a float with no fraction (1.0); the envelope's numbers must be ints.

    A float there passed the schema into the ledgers (PostgreSQL refused "1.0" for an integer column on
    every resend of the batch) and the acks (whose decoder refuses an attempt that is not an int).
    """
    for key in _ENVELOPE_INTEGERS:
        value = item.get(key)
        if value is not None and type(value) is not int:
            raise SchemaViolationError("schema_violation", f"{key}: {value!r} is not an integer")


_BATCH_DECODERS: dict[int, Callable[[list[Any], bytes], DecodedBatch]] = {1: _batch_v1}


def decode_batch(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedBatch:
    """Decode a batch; a bad envelope is reported in `invalid`, a bad batch raises DecodeError.

    A batch of a version with no decoder raises UnsupportedVersionError (a DecodeError). A batch with nothing to
    refuse or explain is decoded in one typed pass (`envelope.typed_batch`); any other takes the general path.
    """
    envelopes = typed_batch(data, limits)
    if envelopes is not None:
        return DecodedBatch(envelopes, [])
    return decode_batch_general(data, limits)


def decode_batch_general(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedBatch:
    """`decode_batch` without its typed lane: msgpack within `limits`, then each envelope against the schemas."""
    return _body(unpack(data, limits), "items", data, _BATCH_DECODERS)


def refuse_version(error: UnsupportedVersionError, at: int) -> list[Ack]:
    """The bridge's answer to a batch it cannot read: every intent it can name is rejected.

    The edge ends them `rejected` with code `unsupported_version` and reports that to their apps,
    instead of resending a batch that can never be read.
    """
    return [Ack(i, AckState.REJECTED, UNSUPPORTED_VERSION, str(error)[:MAX_DETAIL], at) for i in error.ids]


def encode_acks(acks: list[Ack]) -> bytes:
    """The msgpack message for `devices/{id}/acks`."""
    return pack({"v": WIRE_VERSION, "acks": [a.to_wire() for a in acks]})


@dataclass(frozen=True, slots=True)
class ReadAcks:
    """The entries of an acks message this side can read, and why each other one could not be read."""

    acks: list[Ack]
    unreadable: list[str]


def _acks_v1(items: list[Any], _data: bytes) -> ReadAcks:
    acks, unreadable = [], []
    for item in items:
        try:
            acks.append(
                Ack(
                    id=item["id"],
                    state=AckState(item["state"]),
                    code=_text(item, "code", MAX_CODE),
                    detail=_text(item, "detail", MAX_DETAIL),
                    at=_at(item.get("at", 0)),
                    app=_text(item, "app"),
                    attempt=_attempt(item.get("attempt", 0)),
                )
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            unreadable.append(f"bad ack entry: {exc!s:.200}")
    return ReadAcks(acks, unreadable)


def _text(item: dict[str, Any], key: str, limit: int | None = None) -> str:
    """A text field of an ack, at most `limit` characters as sent, with its control characters written out.

    The edge stores code and detail and `edge-outbox ls/show` print them: a NUL, an ESC or a newline from
    the bridge went there raw. Written out rather than refused: a detail may quote a provider's text. What
    the writing out adds is cut at `limit` again."""
    value = item.get(key, "")
    if not isinstance(value, str):  # no str() of whatever came: a number or a list is no code or detail
        raise TypeError(f"ack {key} must be text, not {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise ValueError(f"ack {key} over {limit} characters")
    shown = readable(value)
    return shown if limit is None else shown[:limit]


def _at(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIME:
        raise ValueError(f"ack at must be a time in ms, an integer from 0 to {MAX_TIME}, not {value!r}")
    return value


def _attempt(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ATTEMPT:  # not isinstance: True would pass for 1
        raise ValueError(f"ack attempt must be an integer from 0 to {MAX_ATTEMPT}, not {value!r}")
    return value


_ACKS_DECODERS: dict[int, Callable[[list[Any], bytes], ReadAcks]] = {1: _acks_v1}


def read_acks(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ReadAcks:
    """Decode an acks message entry by entry: an entry this side cannot read (a state a newer bridge added, a
    field out of range) is left out and named in `unreadable`, the others are read. A message that is not an
    acks message at all raises DecodeError."""
    return _body(unpack(data, limits), "acks", data, _ACKS_DECODERS)


def decode_acks(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Ack]:
    """Decode an acks message; raises DecodeError on any malformed entry."""
    read = read_acks(data, limits)
    if read.unreadable:
        raise DecodeError(read.unreadable[0], data)
    return read.acks


def encode_confirms(ids: list[str], attempt: int | None = None) -> bytes:
    """The msgpack message for `devices/{id}/confirms`: final results the edge has applied. With `attempt`,
    the results of that attempt (an intent an operator retried since at the bridge stays unconfirmed)."""
    if attempt is None:
        return pack({"v": WIRE_VERSION, "ids": ids})
    return pack({"v": WIRE_VERSION, "ids": ids, "attempt": attempt})


def _confirms_v1(ids: list[Any], data: bytes) -> list[str]:
    if not all(is_name(i) for i in ids):
        raise DecodeError("confirms carry an invalid id", data)
    return [str(i) for i in ids]


_CONFIRMS_DECODERS: dict[int, Callable[[list[Any], bytes], list[str]]] = {1: _confirms_v1}


def decode_confirms(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Decode a confirms message; every entry must be a valid id."""
    return read_confirms(data, limits)[0]


def read_confirms(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[list[str], int | None]:
    """A confirms message's ids and the attempt their results are of (None: not said, any attempt)."""
    obj = unpack(data, limits)
    ids = _body(obj, "ids", data, _CONFIRMS_DECODERS)
    attempt = obj.get("attempt")
    if attempt is not None and (type(attempt) is not int or not 1 <= attempt <= MAX_ATTEMPT):
        raise DecodeError(f"confirms attempt must be an integer from 1 to {MAX_ATTEMPT}", data)
    return ids, attempt
