"""`readable`: control characters written out, everything else as it was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from intent_contract.readable import readable

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _control(c: str) -> bool:
    return ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF or c in BIDI


@given(st.text() | st.lists(st.sampled_from(["a", " ", "\u200d", *BIDI])).map("".join))
def test_each_control_character_is_written_out_and_the_rest_is_kept(text: str) -> None:
    out = readable(text)
    assert out == "".join(f"\\u{ord(c):04x}" if _control(c) else c for c in text)
    assert not any(_control(c) for c in out)


def test_each_control_character_is_its_code_point() -> None:
    assert readable("a\x00b\tc\n\x7f\x9f\u00a0\ud800") == "a\\u0000b\\u0009c\\u000a\\u007f\\u009f\u00a0\\ud800"


def test_bidirectional_controls_are_written_out_and_other_format_characters_kept() -> None:
    """An RLO in a device's report turned the rest of its `devices ls` row right to left (Trojan Source)."""
    assert readable("v1\u202e4.0 ok\u2066x\u2069") == "v1\\u202e4.0 ok\\u2066x\\u2069"
    assert readable("\U0001f469\u200d\U0001f4bb \u00ad") == "\U0001f469\u200d\U0001f4bb \u00ad"  # ZWJ, soft hyphen
