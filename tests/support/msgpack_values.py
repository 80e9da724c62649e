"""Hypothesis strategies for what a msgpack batch may carry, for the decoders' and the digest's property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT_KEYS = st.text(max_size=8)
# Keys msgpack carries beyond JSON's: binary (and integers, which our decoders refuse).
MSGPACK_KEYS = TEXT_KEYS | st.binary(max_size=4)


def msgpack_values(keys: st.SearchStrategy[Any] = MSGPACK_KEYS) -> st.SearchStrategy[Any]:
    """None, booleans, integers to 2**64 - 1, floats with NaN and the infinities, text, binary, and lists and
    maps of them (maps keyed by `keys`), up to 30 leaves."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=20)
        | st.binary(max_size=8),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=30,
    )
