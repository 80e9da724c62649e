"""`readable`: control characters written out, everything else as it was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from intent_contract.readable import readable


def _control(c: str) -> bool:
    return ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF


@given(st.text())
def test_each_control_character_is_written_out_and_the_rest_is_kept(text: str) -> None:
    out = readable(text)
    assert out == "".join(f"\\u{ord(c):04x}" if _control(c) else c for c in text)
    assert not any(_control(c) for c in out)


def test_each_control_character_is_its_code_point() -> None:
    assert readable("a\x00b\tc\n\x7f\x9f\u00a0\ud800") == "a\\u0000b\\u0009c\\u000a\\u007f\\u009f\u00a0\\ud800"
