"""The wire envelope, and a batch of them decoded and checked in one typed pass.

`Envelope` is a msgspec Struct whose field types carry the envelope schema's bounds (schemas/envelope.json;
tests/unit/test_envelope_typed.py holds the two equal), so that msgspec can decode a whole batch into
envelopes in C, checking each field as it goes. `typed_batch` is the fast lane of `codec.decode_batch`: it
answers only for a batch in which every envelope is valid and nothing is near a limit; for anything else it
returns None and the codec takes its general path (msgpack within the limits, then jsonschema per envelope),
which is also the one that explains each refusal. So a batch is accepted, refused or explained as before;
the typed lane only saves the general path's work on batches that have nothing to explain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from intent_contract.names import KINDS, NAME_PATTERN
from intent_contract.schemas import is_valid
from intent_contract.wire import MAX_ATTEMPT, MAX_TIME, Limits

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
if TYPE_CHECKING:
    Kind = str  # built in code from any str, as before; checked where msgspec decodes
else:
    Kind = Literal[KINDS]
Time = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME)]
Attempt = Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPT)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One intent on the wire.

    The annotations are checked only where msgspec decodes (`typed_batch`); built in code, an envelope is
    whatever it was given, as with a dataclass.
    """

    id: Name
    app: Name
    kind: Kind
    created: Time
    expires: Time | None
    attempt: Attempt
    payload: dict[str, Any]
    priority: Priority = 0

    def to_wire(self) -> dict[str, Any]:
        # Shallow, in field order: the payload is not copied (a deep copy was 13% of the edge's time in a drain).
        return msgspec.structs.asdict(self)


class _BatchV1(msgspec.Struct):
    """A version-1 batch (`codec._batch_v1` reads the same); other top-level keys are ignored, as there."""

    v: Literal[1]
    items: list[Envelope]


def _no_ext(code: int, data: memoryview) -> object:
    raise ValueError(f"msgpack extension type {code}")  # the general path refuses every one (max_ext_len=0)


_DECODER = msgspec.msgpack.Decoder(_BatchV1, ext_hook=_no_ext)

# msgpack's timestamp extension (type -1: fixext 4, fixext 8, ext 8 of 12 bytes), which msgspec decodes into a
# datetime without asking `_no_ext`. A batch holding these bytes anywhere (a string or a number may, by chance)
# takes the general path.
_TIMESTAMPS = (b"\xd6\xff", b"\xd7\xff", b"\xc7\x0c\xff")

# The levels above a payload: the batch's map, its items list, the envelope's map.
_PAYLOAD_DEPTH = 4

# The most fields an envelope map has, and the longest an envelope's string field can be (a name: 64 ASCII
# characters); limits tighter than these send every batch to the general path.
_FIXMAP = 0x80  # a map of 0 to 15 entries, its count in the low bits
_ENVELOPE_FIELDS = len(Envelope.__struct_fields__)
_NAME_MAX = 64


def typed_batch(data: bytes, limits: Limits) -> list[Envelope] | None:
    """The envelopes of a version-1 batch if every one is valid (envelope and payload schema) and the batch is
    within `limits`; None when any of that is not certain, for the general path to decide."""
    if len(data) > min(limits.max_bytes, limits.max_str) or any(marker in data for marker in _TIMESTAMPS):
        return None  # no string or binary can then be longer than max_str
    if not data or not _FIXMAP <= data[0] <= _FIXMAP + min(15, limits.max_map):
        return None  # msgspec ignores the keys it does not read: the top-level map must be small on its face
    if limits.max_map < _ENVELOPE_FIELDS or limits.max_str < _NAME_MAX:
        return None
    try:
        items = _DECODER.decode(data).items
    except (msgspec.DecodeError, ValueError, RecursionError):  # ValidationError is a DecodeError; a payload
        return None  # nested past the interpreter's limit is the general path's to refuse (by depth)
    if len(items) > limits.max_items or not _within(items, limits):
        return None
    try:
        if not all(is_valid(e.kind, e.payload) for e in items):
            return None
    except ValueError:
        return None
    return items


def _within(items: list[Envelope], limits: Limits) -> bool:
    """Whether the payloads nest and grow within `limits` as msgpack's decoder (strict map keys) would let them:
    the general path's `check_depth` and unpack limits, level by level."""
    level: list[Any] = [e.payload for e in items]
    if level and max(map(len, level)) > limits.max_map:
        return False
    depth = _PAYLOAD_DEPTH
    while level:
        if depth > limits.max_depth:
            return False
        below = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        # The payload's own keys are typed str; inside it msgspec takes any key the general path refuses.
        if any(
            len(node) > limits.max_map or not all(type(key) is str for key in node)
            if type(node) is dict
            else len(node) > limits.max_items
            for node in below
        ):
            return False
        level = below
        depth += 1
    return True
