"""The wire codec round-trips and refuses hostile input quickly."""

import contextlib
import time
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from intent_contract.codec import (
    Ack,
    AckState,
    Envelope,
    Limits,
    decode_acks,
    decode_batch,
    decode_confirms,
    encode_acks,
    encode_batch,
    encode_confirms,
    read_acks,
    refuse_version,
)
from intent_contract.errors import DecodeError, UnsupportedVersionError
from intent_contract.wire import MAX_ATTEMPT, MAX_CODE, MAX_DETAIL, MAX_TIME
from tests.support.msgpack_values import msgpack_values as msgpack_values_of

PAYLOAD = {"to": "a@example.com", "subject": "S", "text": "t"}


def envelope(i: int = 1, **kw: object) -> Envelope:
    fields: dict[str, object] = {
        "id": f"id-{i}",
        "app": "hvac",
        "kind": "email.send",
        "created": 1000 + i,
        "expires": None,
        "attempt": 1,
        "payload": PAYLOAD,
    }
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_batch_round_trip() -> None:
    batch = [envelope(i, priority=i % 10) for i in range(50)]
    decoded = decode_batch(encode_batch(batch))
    assert decoded.envelopes == batch
    assert decoded.invalid == []


def test_bad_envelope_is_reported_not_fatal() -> None:
    raw = msgpack.packb(
        {
            "v": 1,
            "items": [
                envelope(1).to_wire(),
                {"id": "x2", "kind": "fax"},
                envelope(3, payload={"to": "a@example.com"}).to_wire(),
            ],
        }
    )
    decoded = decode_batch(raw)
    assert [e.id for e in decoded.envelopes] == ["id-1"]
    assert [(i, c) for i, c, _, _ in decoded.invalid] == [("x2", "schema_violation"), ("id-3", "schema_violation")]
    assert [k for *_, k in decoded.invalid] == ["", "email.send"]  # the kind when it is a known one


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb({"v": 2, "items": []}),
        msgpack.packb({"items": []}),
        msgpack.packb({"v": True, "items": []}),
        msgpack.packb({"v": "1", "items": []}),
        msgpack.packb({"v": 1, "items": {}}),
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: 2}),
    ],
)
def test_malformed_batches_raise(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_batch(raw)


def test_a_batch_of_another_version_names_the_ids_it_can_read() -> None:
    items = [envelope(1).to_wire(), {"id": "bad id"}, "not a map", {"id": "x-2", "anything": [1]}]
    with pytest.raises(UnsupportedVersionError, match="wire version 2 is not supported") as caught:
        decode_batch(msgpack.packb({"v": 2, "items": items, "extra": "field"}))
    assert (caught.value.version, caught.value.ids) == (2, ("id-1", "x-2"))
    acks = refuse_version(caught.value, at=7)
    assert [(a.id, a.state, a.code, a.at) for a in acks] == [
        ("id-1", AckState.REJECTED, "unsupported_version", 7),
        ("x-2", AckState.REJECTED, "unsupported_version", 7),
    ]
    assert decode_acks(encode_acks(acks)) == acks  # the refusal itself is a plain v1 acks message
    # another shape altogether: nothing to name, but still an unsupported version, not garbage
    with pytest.raises(UnsupportedVersionError) as caught:
        decode_batch(msgpack.packb({"v": 3, "envelopes": [envelope(1).to_wire()]}))
    assert caught.value.ids == ()


@pytest.mark.parametrize(("decode", "key"), [(decode_batch, "items"), (decode_acks, "acks"), (decode_confirms, "ids")])
def test_every_decoder_refuses_unknown_versions(decode: Any, key: str) -> None:
    with pytest.raises(UnsupportedVersionError, match="this side speaks 1"):
        decode(msgpack.packb({"v": 2, key: []}))


def test_oversized_message_refused_before_unpacking() -> None:
    raw = b"\x00" * (Limits().max_bytes + 1)
    with pytest.raises(DecodeError, match="over the"):
        decode_batch(raw)


def test_huge_declared_lengths_refused_quickly() -> None:
    # array32 / map32 / str32 headers that claim 4 billion entries, with no data behind them
    for header in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff"):
        started = time.perf_counter()
        with pytest.raises(DecodeError):
            decode_batch(header)
        assert time.perf_counter() - started < 0.5


def test_deep_nesting_refused() -> None:
    deep: object = "x"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(DecodeError, match="nested deeper"):
        decode_batch(msgpack.packb({"v": 1, "items": [envelope(1, payload={"to": deep}).to_wire()]}))
    # the small limit holds too
    with pytest.raises(DecodeError):
        decode_batch(msgpack.packb({"v": 1, "items": [[[[1]]]]}), Limits(max_depth=3))


def test_acks_round_trip_and_validation() -> None:
    acks = [
        Ack("a1", AckState.ACCEPTED, at=5),
        Ack("a2", AckState.FAILED, "smtp_550", "mailbox unavailable", 6, "hvac"),
    ]
    assert decode_acks(encode_acks(acks)) == acks
    with pytest.raises(DecodeError):
        decode_acks(msgpack.packb({"v": 1, "acks": [{"id": "a1", "state": "bogus"}]}))
    with pytest.raises(DecodeError):
        decode_acks(msgpack.packb({"v": 1, "acks": [{"id": "bad id", "state": "failed"}]}))


def test_read_acks_leaves_out_only_the_entries_it_cannot_read() -> None:
    good = [Ack("a1", AckState.ACCEPTED, at=5), Ack("a2", AckState.DELIVERED, "sent", "", 6)]
    odd = [
        {"id": "a3", "state": "deferred"},  # a state a newer bridge added
        {"id": "bad id", "state": "failed"},
        {"id": "a4", "state": "failed", "code": "x" * 65},
        {"id": "a5", "state": "failed", "at": -1},
        "not a map",
    ]
    raw = msgpack.packb({"v": 1, "acks": [odd[0], good[0].to_wire(), *odd[1:], good[1].to_wire()]})
    read = read_acks(raw)
    assert read.acks == good
    assert len(read.unreadable) == len(odd)
    assert all(why.startswith("bad ack entry: ") and len(why) <= 215 for why in read.unreadable)
    with pytest.raises(DecodeError, match="bad ack entry"):
        decode_acks(raw)  # the strict reading: any entry it cannot read refuses the message
    with pytest.raises(DecodeError):
        read_acks(msgpack.packb({"v": 1, "acks": "not a list"}))


def test_confirms() -> None:
    assert decode_confirms(encode_confirms(["a", "b"])) == ["a", "b"]
    with pytest.raises(DecodeError):
        decode_confirms(msgpack.packb({"v": 1, "ids": ["ok", "not ok"]}))


@given(st.binary(max_size=2048))
def test_decoders_never_raise_anything_but_decode_error(raw: bytes) -> None:
    for decode in (decode_batch, decode_acks, decode_confirms):
        with contextlib.suppress(DecodeError):
            decode(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@given(json_values)
def test_arbitrary_structures_inside_v1_batches(value: object) -> None:
    try:
        decoded = decode_batch(msgpack.packb({"v": 1, "items": [value]}))
    except DecodeError:
        return
    assert decoded.envelopes == []
    assert len(decoded.invalid) == 1


# What msgpack carries beyond JSON: binary values and keys, floats with NaN and infinities, integers to 2**64 - 1.
msgpack_values = msgpack_values_of()
_FIELDS = ["id", "app", "kind", "created", "expires", "attempt", "priority", "payload", "subject", "extra"]
_LEDGER_INTEGERS = range(-(2**63), 2**63)  # what SQLite's INTEGER and PostgreSQL's bigint hold


@given(field=st.sampled_from(_FIELDS), value=msgpack_values)
@example(field="attempt", value=1.0)  # JSON Schema's "integer" takes it; PostgreSQL's integer column did not
@example(field="created", value=float(2**40))
def test_any_value_in_any_field_of_an_envelope_is_judged_on_its_own(field: str, value: object) -> None:
    hostile = envelope(1).to_wire()
    if field in ("subject", "extra"):
        hostile["payload"] = {**PAYLOAD, field: value}
    else:
        hostile[field] = value
    raw = msgpack.packb({"v": 1, "items": [hostile, envelope(2).to_wire()]}, use_bin_type=True)
    decoded = decode_batch(raw)  # neither a crash nor the batch refused: the entry alone
    assert len(decoded.envelopes) + len(decoded.invalid) == 2
    assert decoded.envelopes[-1] == envelope(2)
    for e in decoded.envelopes:  # what passes, the ledgers can store
        assert all(type(n) is int and n in _LEDGER_INTEGERS for n in (e.created, e.expires or 0, e.attempt, e.priority))


def test_an_acks_attempt_is_optional_on_the_wire_and_checked() -> None:
    with_attempt = Ack("i-1", AckState.ACCEPTED, at=5, attempt=2)
    assert with_attempt.to_wire()["attempt"] == 2
    assert "attempt" not in Ack("i-1", AckState.ACCEPTED, at=5).to_wire()  # as older bridges send it
    assert decode_acks(encode_acks([with_attempt, Ack("i-2", AckState.FAILED)])) == [
        with_attempt,
        Ack("i-2", AckState.FAILED),
    ]
    # past MAX_ATTEMPT: 2**63 also failed the edge's SQL (OverflowError) on every resend of the acks
    for bad in (-1, "2", True, 1.5, MAX_ATTEMPT + 1, 2**63, 2**64 - 1):
        raw = msgpack.packb({"v": 1, "acks": [{"id": "i-1", "state": "accepted", "attempt": bad}]})
        with pytest.raises(DecodeError, match="attempt"):
            decode_acks(raw)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("code", 5),  # these were str()-coerced: a number, a list or a map came out as its repr
        ("code", ["x"]),
        ("detail", {"a": 1}),
        ("detail", b"bytes"),
        ("app", None),
        ("at", "5"),  # and `at` went through int(): a float, a text of digits or a bool passed
        ("at", 1.5),
        ("at", True),
        ("at", -1),
        ("at", MAX_TIME + 1),
        ("at", 2**64 - 1),
    ],
)
def test_an_acks_fields_must_have_their_types(field: str, bad: object) -> None:
    good = Ack("i-1", AckState.FAILED, "smtp_error", "refused", at=MAX_TIME, app="hvac-ui").to_wire()
    assert decode_acks(msgpack.packb({"v": 1, "acks": [good]}))[0].at == MAX_TIME
    raw = msgpack.packb({"v": 1, "acks": [{**good, field: bad}]}, use_bin_type=True)
    with pytest.raises(DecodeError, match=field):
        decode_acks(raw)


def test_control_characters_in_an_acks_text_are_written_out_on_decoding() -> None:
    """code, detail and app went into the edge's intents and events raw (a NUL, an ESC, a newline), and
    `edge-outbox ls/show` printed them."""
    raw = msgpack.packb(
        {"v": 1, "acks": [{"id": "a1", "state": "failed", "code": "smtp_550\x00\x1b[2J", "detail": "line1\nFAKE\x00",
                           "at": 1, "app": "hv\x07ac"}]},
        use_bin_type=True,
    )  # fmt: skip
    (ack,) = decode_acks(raw)
    assert (ack.code, ack.detail, ack.app) == ("smtp_550\\u0000\\u001b[2J", "line1\\u000aFAKE\\u0000", "hv\\u0007ac")


def test_an_acks_code_is_at_most_64_characters_and_a_written_out_text_stays_within_its_limit() -> None:
    good = Ack("i-1", AckState.FAILED, "c" * MAX_CODE, "d", at=1).to_wire()
    assert decode_acks(msgpack.packb({"v": 1, "acks": [good]}))[0].code == "c" * MAX_CODE
    with pytest.raises(DecodeError, match="code over 64"):
        decode_acks(msgpack.packb({"v": 1, "acks": [{**good, "code": "c" * (MAX_CODE + 1)}]}))
    with pytest.raises(ValueError, match="code over 64"):
        Ack("i-1", AckState.FAILED, "c" * (MAX_CODE + 1))
    (ack,) = decode_acks(
        msgpack.packb({"v": 1, "acks": [{**good, "code": "\x00" * MAX_CODE, "detail": "\x1b" * MAX_DETAIL}]})
    )
    assert (ack.code, ack.detail) == (("\\u0000" * MAX_CODE)[:MAX_CODE], ("\\u001b" * MAX_DETAIL)[:MAX_DETAIL])
