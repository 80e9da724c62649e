"""packb_joined gives msgpack.packb's bytes exactly, at the bin header's size boundaries too."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from intent_contract.msgpack_join import packb_joined

SIZES = (0, 1, 255, 256, 65_535, 65_536, 70_000)
small = st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=40), st.booleans())
sized = st.sampled_from(SIZES).map(lambda n: b"\x01" * n)
blobs = st.one_of(st.binary(max_size=300), sized)
values = st.one_of(small, blobs, st.lists(blobs, max_size=4), st.dictionaries(st.text(max_size=5), small, max_size=3))


@given(st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_joined_is_msgpacks_own_bytes(obj: dict[str, Any]) -> None:
    assert packb_joined(obj) == msgpack.packb(obj, use_bin_type=True)


def test_every_bin_header_size_matches() -> None:
    for size in SIZES:
        obj = {"body": b"x" * size, "batches": [b"y" * size, b""]}
        assert packb_joined(obj) == msgpack.packb(obj, use_bin_type=True), size
