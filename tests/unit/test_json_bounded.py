"""intent_contract.json_bounded: JSON from outside with size and depth limits."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent_contract.errors import DecodeError
from intent_contract.json_bounded import INT64_RANGE, MAX_DEPTH, loads, long_digits


@given(depth=st.integers(min_value=1, max_value=3 * MAX_DEPTH), use_objects=st.booleans())
def test_nesting_is_refused_exactly_past_the_limit(depth: int, use_objects: bool) -> None:
    opening, closing = ('{"a":', "}") if use_objects else ("[", "]")
    text = opening * depth + "1" + closing * depth
    if depth <= MAX_DEPTH:
        assert loads(text, max_bytes=1 << 20) is not None
    else:
        with pytest.raises(DecodeError, match="nested deeper"):
            loads(text, max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 16_000, "nested deeper"),  # the parser itself gives up (RecursionError)
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": Infinity}', "not JSON"),
        (b'{"a": 1e400}', "not JSON"),  # past the float range: the standard parser made it infinity
        (b'["\\ud800"]', "not JSON"),  # a lone surrogate is not text: msgpack and the schema check fail on it
        (b'{"a": "\\udfff", "n": 1234567890123456789012}', "not JSON"),  # the same with 19 digits in a row
        (b"\xff{}", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[" + b"1," * 10_000 + b"1]", "over the 20000-byte limit"),
    ],
)
def test_bad_input_is_a_decode_error(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        loads(raw, max_bytes=20_000)


def test_text_holding_a_lone_surrogate_is_not_utf8() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        loads('{"a": "\ud800"}', max_bytes=100)  # a str, not bytes: the surrogate itself, not its escape


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_BRACKETY = st.text(alphabet="[]{}ab", max_size=6)  # brackets in strings must not fool the limit
_DOCUMENTS = st.recursive(
    st.none() | st.integers() | _BRACKETY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_BRACKETY, inner, max_size=3),
    max_leaves=12,
)


@given(document=_DOCUMENTS, max_depth=st.integers(min_value=1, max_value=4))
def test_any_document_is_refused_exactly_when_it_nests_past_the_limit(document: object, max_depth: int) -> None:
    text = json.dumps(document)
    if _depth(document) <= max_depth:
        assert loads(text, max_bytes=1 << 20, max_depth=max_depth) == document
    else:
        with pytest.raises(DecodeError, match="nested deeper"):
            loads(text, max_bytes=1 << 20, max_depth=max_depth)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: past 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # any code point but lone surrogates
)
_ANY_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=16
)


@given(document=_ANY_JSON, ascii_only=st.booleans())
def test_any_valid_document_reads_as_the_standard_parser_reads_it(document: object, ascii_only: bool) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)
    assert loads(text, max_bytes=1 << 20, max_depth=64) == json.loads(text)


@pytest.mark.parametrize(
    ("number", "fits"),
    [(INT64_RANGE[0], True), (INT64_RANGE[0] - 1, False), (INT64_RANGE[1], True), (INT64_RANGE[1] + 1, False)],
)
def test_integers_are_exact_and_int64_refuses_what_msgpack_cannot_carry(number: int, fits: bool) -> None:
    text = json.dumps({"deep": [{"n": number}]})
    assert loads(text, max_bytes=1000) == {"deep": [{"n": number}]}  # exact, not a float
    if fits:
        assert loads(text, max_bytes=1000, int64=True) == {"deep": [{"n": number}]}
    else:
        with pytest.raises(DecodeError, match="integer out of the 64-bit range"):
            loads(text, max_bytes=1000, int64=True)


_DIGIT_RUNS = st.lists(st.sampled_from([b"7", b"0", b"a", b"-", b"9" * 18]), max_size=12).map(b"".join)


@given(st.binary(max_size=64) | _DIGIT_RUNS)
def test_long_digits_finds_exactly_19_digits_in_a_row(raw: bytes) -> None:
    assert long_digits(raw) is bool(re.search(rb"[0-9]{19}", raw))
