"""What travels on a USB stick between a site that is never online and the bridge.

- A **bundle** (edge -> bridge) carries the same wire messages the MQTT path sends: intent batches
  (`codec.encode_batch`) and confirms (`codec.encode_confirms`), in a body signed by the device
  (intent_contract.signed) and encrypted to the bridge's offline key (intent_contract.sealed).
- A **receipt** (bridge -> edge) carries the same acks messages (`codec.encode_acks`) the edge applies
  online, the device's revocation and the bridge's time, signed by the bridge's offline key.

Bodies are msgpack maps read with limits on size, counts and depth (a body is only decoded after
its signature verified, but the limits hold regardless). Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from intent_contract.codec import check_depth
from intent_contract.errors import DecodeError
from intent_contract.msgpack_join import packb_joined
from intent_contract.names import is_name
from intent_contract.sizes import parse_size
from intent_contract.wire import DEFAULT_LIMITS

VERSION: Final = 1
BUNDLE_TYPE: Final = "edge-outbox-bundle"
RECEIPT_TYPE: Final = "edge-outbox-receipt"
# A bundle or receipt file larger than this is refused before it is read (both ends; --max-bytes
# lowers or raises it up to MAX_FILE_BYTES). 64 MiB is about 60,000 intents of 1 KiB.
DEFAULT_FILE_BYTES: Final = 64 << 20
MAX_FILE_BYTES: Final = 1 << 30
# An enrollment ticket, request or response: a few KiB; a larger file is refused before it is read.
ENROLL_FILE_BYTES: Final = 64 * 1024
# Wire messages in one body: each is at most DEFAULT_LIMITS.max_bytes, so the file limit binds first.
MAX_MESSAGES: Final = 20_000
# Intents in one bundle (an export stops there; an import refuses more). The bridge answers each with
# an ack held in memory until the receipt is written: at most ~1.2 KB each (a 1,000-character detail),
# so the receipt of a full bundle stays under DEFAULT_FILE_BYTES. Without it, a 1.25 MB bundle of
# bare ids became 100,000 refusals and an 11 MB receipt, and 64 MiB would have been millions.
MAX_BUNDLE_INTENTS: Final = 50_000
_MAX_DEPTH: Final = 4


def file_limit(text: str) -> int:
    """A --max-bytes value: a size within 1 byte and MAX_FILE_BYTES; ValueError otherwise."""
    size = parse_size(text)
    if not 0 < size <= MAX_FILE_BYTES:
        raise ValueError(f"must be within 1 byte and {MAX_FILE_BYTES >> 20} MiB")
    return size


def _pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=4096,
            max_bin_len=DEFAULT_LIMITS.max_bytes,
            max_array_len=MAX_MESSAGES,
            max_map_len=32,
            max_ext_len=0,
        )
    except ValueError as exc:
        raise DecodeError(f"not a valid {what}: {exc}", data, exc) from exc
    check_depth(obj, _MAX_DEPTH, data)
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise DecodeError(f"not a {what} of version {VERSION}", data)
    return obj


def _str(obj: dict[str, Any], key: str, data: bytes, *, name: bool = True) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (name and not is_name(value)):
        raise DecodeError(f"field {key!r} must be {'a valid name' if name else 'a string'}", data)
    return value


def _int(obj: dict[str, Any], key: str, data: bytes) -> int:
    value = obj.get(key)
    if type(value) is not int:
        raise DecodeError(f"field {key!r} must be an integer", data)
    return value


def _optional_int(obj: dict[str, Any], key: str, data: bytes) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, data)


def _optional_bytes(obj: dict[str, Any], key: str, data: bytes) -> bytes | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bytes):
        raise DecodeError(f"field {key!r} must be bytes", data)
    return value


def _messages(obj: dict[str, Any], key: str, data: bytes) -> tuple[bytes, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(m, bytes) for m in value):
        raise DecodeError(f"field {key!r} must be a list of wire messages", data)
    return tuple(value)


def _head(obj: dict[str, Any], data: bytes) -> dict[str, Any]:
    """The fields every body starts with: who it is about, which bridge key, its id and when it was made."""
    return {
        "device_id": _str(obj, "device_id", data),
        "bridge_key": _str(obj, "bridge_key", data),
        "id": _str(obj, "id", data),
        "made_at": _int(obj, "made_at", data),
    }


def _pack_body(head: Bundle | Receipt, **rest: Any) -> bytes:
    fields = {"device_id": head.device_id, "bridge_key": head.bridge_key, "id": head.id, "made_at": head.made_at}
    return packb_joined({"v": VERSION, **fields, **rest})


@dataclass(frozen=True, slots=True)
class Bundle:
    """The signed body of a bundle. Times in ms since the epoch."""

    device_id: str
    bridge_key: str  # the id of the bridge key it is encrypted to (bound into the signed body)
    id: str
    made_at: int  # by the device's own clock, uncorrected: the receipt echoes it (bridge_clock)
    # Not in repr, as the receipt's acks: a bundle's messages are up to 1 GiB (asyncio.run reprs what its
    # coroutine returns: `cloud-bridge import` once took 100 MB more for a 64 MB bundle).
    batches: tuple[bytes, ...] = field(default=(), repr=False)
    confirms: tuple[bytes, ...] = field(default=(), repr=False)
    rotation: bytes | None = field(default=None, repr=False)  # a key rotation document (rotate-key --offline)

    def encode(self) -> bytes:
        return _pack_body(self, batches=list(self.batches), confirms=list(self.confirms), rotation=self.rotation)

    @classmethod
    def decode(cls, data: bytes) -> Bundle:
        obj = _unpack(data, "bundle")
        return cls(
            **_head(obj, data),
            batches=_messages(obj, "batches", data),
            confirms=_messages(obj, "confirms", data),
            rotation=_optional_bytes(obj, "rotation", data),
        )


@dataclass(frozen=True, slots=True)
class BundleEcho:
    """The bundle a receipt answers: its id, when the device made it (its clock) and when it was imported."""

    id: str
    made_at: int
    imported_at: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """The signed body of a receipt. Times in ms since the epoch, by the bridge's clock unless noted."""

    device_id: str
    bridge_key: str
    id: str
    made_at: int
    revoked_at: int | None = None
    bundle: BundleEcho | None = None
    acks: tuple[bytes, ...] = field(default=(), repr=False)
    next_key: str | None = None  # the next public key the bundle's rotation proposed, now accepted
    # The bridge refused the bundle's rotation for good: why (a refusal code), and the key it proposed when
    # readable (the device drops that proposal only: a receipt may come after it proposed another).
    rotation_refused: str | None = None
    refused_key: str | None = None

    def encode(self) -> bytes:
        echo = None
        if self.bundle is not None:
            echo = {"id": self.bundle.id, "made_at": self.bundle.made_at, "imported_at": self.bundle.imported_at}
        return _pack_body(
            self, revoked_at=self.revoked_at, bundle=echo, acks=list(self.acks), next_key=self.next_key,
            rotation_refused=self.rotation_refused, refused_key=self.refused_key,
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Receipt:
        obj = _unpack(data, "receipt")
        echo = obj.get("bundle")
        bundle = None
        if echo is not None:
            if not isinstance(echo, dict):
                raise DecodeError("field 'bundle' must be a map", data)
            bundle = BundleEcho(_str(echo, "id", data), _int(echo, "made_at", data), _int(echo, "imported_at", data))
        return cls(
            **_head(obj, data),
            revoked_at=_optional_int(obj, "revoked_at", data),
            bundle=bundle,
            acks=_messages(obj, "acks", data),
            next_key=None if obj.get("next_key") is None else _str(obj, "next_key", data, name=False),
            rotation_refused=None if obj.get("rotation_refused") is None else _str(obj, "rotation_refused", data),
            refused_key=None if obj.get("refused_key") is None else _str(obj, "refused_key", data, name=False),
        )


ENROLL_REQUEST_TYPE: Final = "edge-outbox-enroll-request"
ENROLL_RESPONSE_TYPE: Final = "edge-outbox-enroll-response"
_MAX_PEM = 4096


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """A device's offline enrollment request: the one-time code and its new public key, signed with that key
    (proof that it holds the private half) and encrypted to the bridge key named in the ticket."""

    code: str
    public_key: str
    bridge_key: str
    made_at: int  # the device's own clock

    def encode(self) -> bytes:
        return _pack(
            {
                "v": VERSION,
                "code": self.code,
                "public_key": self.public_key,
                "bridge_key": self.bridge_key,
                "made_at": self.made_at,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> EnrollRequest:
        obj = _unpack(data, "enrollment request")
        public_key = _str(obj, "public_key", data, name=False)
        code = _str(obj, "code", data, name=False)
        if len(public_key) > _MAX_PEM or not 0 < len(code) <= 200:
            raise DecodeError("enrollment request fields out of bounds", data)
        return cls(code, public_key, _str(obj, "bridge_key", data), _int(obj, "made_at", data))


@dataclass(frozen=True, slots=True)
class EnrollResponse:
    """The bridge's signed answer: the device's identity, the key it enrolled (echoed) and the bridge's time."""

    device_id: str
    tenant: str
    name: str
    audience: str
    public_key: str
    bridge_key: str
    made_at: int  # the bridge's clock
    request_made_at: int  # echoed: with made_at, it bounds the device's clock offset from above

    def encode(self) -> bytes:
        return _pack(
            {
                "v": VERSION,
                "device_id": self.device_id,
                "tenant": self.tenant,
                "name": self.name,
                "audience": self.audience,
                "public_key": self.public_key,
                "bridge_key": self.bridge_key,
                "made_at": self.made_at,
                "request_made_at": self.request_made_at,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> EnrollResponse:
        obj = _unpack(data, "enrollment response")
        return cls(
            device_id=_str(obj, "device_id", data),
            tenant=_str(obj, "tenant", data),
            name=_str(obj, "name", data),
            audience=_str(obj, "audience", data, name=False),
            public_key=_str(obj, "public_key", data, name=False),
            bridge_key=_str(obj, "bridge_key", data),
            made_at=_int(obj, "made_at", data),
            request_made_at=_int(obj, "request_made_at", data),
        )


KEY_ROTATION_TYPE: Final = "edge-outbox-key-rotation"  # signed by the device's current key
NEW_KEY_TYPE: Final = "edge-outbox-new-key"  # inside it, signed by the next key


@dataclass(frozen=True, slots=True)
class NewKey:
    """The key a device moves to: signed with that key (proof it holds it), then with its current key."""

    device_id: str
    public_key: str
    made_at: int

    def encode(self) -> bytes:
        return _pack(
            {"v": VERSION, "device_id": self.device_id, "public_key": self.public_key, "made_at": self.made_at}
        )

    @classmethod
    def decode(cls, data: bytes) -> NewKey:
        obj = _unpack(data, "key rotation")
        public_key = _str(obj, "public_key", data, name=False)
        if len(public_key) > _MAX_PEM:
            raise DecodeError("key rotation: public key too long", data)
        return cls(_str(obj, "device_id", data), public_key, _int(obj, "made_at", data))
