"""The typed lane of decode_batch: it takes only batches the general path accepts whole, and reads them alike."""

import json
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from intent_contract.codec import DecodedBatch, Envelope, decode_batch, decode_batch_general, encode_batch
from intent_contract.envelope import typed_batch
from intent_contract.errors import DecodeError
from intent_contract.names import KINDS
from intent_contract.schemas import schema_dir
from intent_contract.wire import DEFAULT_LIMITS, Limits
from tests.support.msgpack_values import MSGPACK_KEYS
from tests.support.msgpack_values import msgpack_values as msgpack_values_of

PAYLOAD = {"credential": "sink", "method": "POST", "path": "/hook", "json": {"n": 1, "list": [1, {"a": None}]}}


def wire(i: int = 1, **changes: object) -> dict[str, Any]:
    item = Envelope(f"id-{i}", "app", "http.request", 1_700_000_000_000 + i, None, 1, PAYLOAD).to_wire()
    return {**item, **changes}


def batch(*items: object, **top: object) -> bytes:
    return msgpack.packb({"v": 1, "items": list(items), **top}, use_bin_type=True, datetime=False)


def nested(levels: int) -> bytes:
    """A batch whose payload's `json` is `levels` lists deep (one byte each), past any recursion limit."""
    marker = {**PAYLOAD, "json": "HERE"}
    return batch(wire(1, payload=marker)).replace(msgpack.packb("HERE"), b"\x91" * levels + b"\xc0")


def general(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedBatch | DecodeError:
    try:
        return decode_batch_general(data, limits)
    except DecodeError as exc:
        return exc


def test_the_envelopes_bounds_are_the_schemas() -> None:
    schema = json.loads((schema_dir() / "envelope.json").read_text())
    name = json.loads((schema_dir() / "common.json").read_text())["$defs"]["name"]
    info = msgspec.inspect.type_info(Envelope)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: f for f in info.fields}
    assert set(fields) == set(schema["properties"])
    assert {n for n, f in fields.items() if f.required} == set(schema["required"])
    assert info.forbid_unknown_fields is not schema["additionalProperties"]
    for key in ("id", "app"):
        string = fields[key].type
        assert isinstance(string, msgspec.inspect.StrType)
        assert string.pattern == name["pattern"]
    kind = fields["kind"].type
    assert isinstance(kind, msgspec.inspect.LiteralType)
    assert set(kind.values) == set(schema["properties"]["kind"]["enum"]) == set(KINDS)
    for key in ("created", "attempt", "priority", "expires"):
        bounds = {"ge": schema["properties"][key]["minimum"], "le": schema["properties"][key]["maximum"]}
        typ = fields[key].type
        if key == "expires":
            assert isinstance(typ, msgspec.inspect.UnionType)
            assert schema["properties"][key]["type"] == ["integer", "null"]
            typ = next(t for t in typ.types if not isinstance(t, msgspec.inspect.NoneType))
        assert isinstance(typ, msgspec.inspect.IntType)
        assert {"ge": typ.ge, "le": typ.le} == bounds
    assert isinstance(fields["payload"].type, msgspec.inspect.DictType)
    assert schema["properties"]["payload"]["type"] == "object"


def test_a_valid_batch_takes_the_typed_lane_and_reads_as_the_general_path_reads_it() -> None:
    data = encode_batch([Envelope(**wire(i)) for i in range(50)])
    typed = typed_batch(data, DEFAULT_LIMITS)
    assert typed is not None
    assert DecodedBatch(typed, []) == decode_batch(data) == general(data)


@pytest.mark.parametrize(
    ("why", "data", "limits"),
    [
        ("an unknown field", batch(wire(1, extra=1)), DEFAULT_LIMITS),
        ("a float attempt", batch(wire(1, attempt=1.0)), DEFAULT_LIMITS),
        ("a bool priority", batch(wire(1, priority=True)), DEFAULT_LIMITS),
        ("a bad id", batch(wire(1, id="-x")), DEFAULT_LIMITS),
        ("a payload against its kind's schema", batch(wire(1, payload={"method": "POST"})), DEFAULT_LIMITS),
        ("an integer key inside the payload", batch(wire(1, payload={**PAYLOAD, "json": {1: 2}})), DEFAULT_LIMITS),
        ("a binary key inside the payload", batch(wire(1, payload={**PAYLOAD, "json": {b"k": 2}})), DEFAULT_LIMITS),
        ("a timestamp", batch(wire(1, payload={**PAYLOAD, "json": msgpack.Timestamp(1, 0)})), DEFAULT_LIMITS),
        ("an extension type", batch(wire(1, payload={**PAYLOAD, "json": msgpack.ExtType(5, b"x")})), DEFAULT_LIMITS),
        ("a payload too deep", batch(wire(1, payload={**PAYLOAD, "json": [[[[[1]]]]]})), Limits(max_depth=8)),
        ("a list too long", batch(wire(1, payload={**PAYLOAD, "json": list(range(20))})), Limits(max_items=10)),
        (
            "a map too long",
            batch(wire(1, payload={**PAYLOAD, "json": {str(k): k for k in range(20)}})),
            Limits(max_map=10),
        ),
        ("a payload with too many keys", batch(wire(1, payload={str(k): k for k in range(20)})), Limits(max_map=10)),
        ("a string too long", batch(wire(1, payload={**PAYLOAD, "json": "x" * 300})), Limits(max_str=256)),
        ("too many envelopes", batch(*(wire(i) for i in range(12))), Limits(max_items=10)),
        ("too many top-level keys", batch(wire(1), **{f"k{n}": n for n in range(20)}), DEFAULT_LIMITS),
        ("another version", msgpack.packb({"v": 2, "items": [wire(1)]}), DEFAULT_LIMITS),
        ("not msgpack", b"\xc1", DEFAULT_LIMITS),
        # msgspec's decoder raised RecursionError out of decode_batch (the general path refuses it by depth)
        ("a payload nested past the interpreter's recursion limit", nested(200_000), DEFAULT_LIMITS),
    ],
)
def test_what_the_general_path_refuses_or_explains_goes_to_it(why: str, data: bytes, limits: Limits) -> None:
    assert typed_batch(data, limits) is None, why
    decoded = general(data, limits)
    if isinstance(decoded, DecodeError):
        with pytest.raises(DecodeError) as info:
            decode_batch(data, limits)
        assert str(info.value) == str(decoded), why
    else:
        assert decode_batch(data, limits) == decoded, why


msgpack_values = msgpack_values_of(MSGPACK_KEYS | st.integers(0, 9))
_FIELDS = ["id", "app", "kind", "created", "expires", "attempt", "priority", "payload", "json", "extra"]


@given(field=st.sampled_from(_FIELDS), value=msgpack_values, depth=st.integers(3, 8))
@example(field="json", value=[[[[1]]]], depth=8)
@example(field="json", value={"a": {1: 2}}, depth=32)
def test_the_typed_lane_never_takes_what_the_general_path_would_not_take_whole(
    field: str, value: object, depth: int
) -> None:
    hostile = wire(1)
    if field in ("json", "extra"):
        hostile["payload"] = {**PAYLOAD, field: value}
    else:
        hostile[field] = value
    try:
        data = batch(hostile, wire(2))
    except (ValueError, TypeError):  # what msgpack cannot pack (a dict key it refuses)
        return
    limits = Limits(max_depth=depth)
    typed = typed_batch(data, limits)
    decoded = general(data, limits)
    if typed is not None:
        assert decoded == DecodedBatch(typed, [])
