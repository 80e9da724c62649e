"""intent_contract.json_bounded: JSON from outside with size and depth limits."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent_contract.errors import DecodeError
from intent_contract.json_bounded import MAX_DEPTH, loads


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
        (b"\xff{}", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[" + b"1," * 10_000 + b"1]", "over the 20000-byte limit"),
    ],
)
def test_bad_input_is_a_decode_error(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        loads(raw, max_bytes=20_000)


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
