"""The dashboard's one-page notice cookie: what it carries back, and what it makes of values not its own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.dashboard.notice import MAX_CHARS, notice_text, notice_value


@given(st.text(max_size=400))
def test_a_notice_comes_back_as_it_went_clipped(text: str) -> None:
    value = notice_value(text)
    assert value.isascii() and "=" not in value and ";" not in value and " " not in value
    assert notice_text(value) == text[:MAX_CHARS]


def test_a_value_not_ours_is_no_notice() -> None:
    for value in (None, "", "%%%", "\u00e9", "_w", "gA"):  # not base64; a lone byte 0xff or 0x80: not UTF-8
        assert notice_text(value) == "", value
