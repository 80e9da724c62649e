"""One value is `=` (what SQLite's partial indexes match), several an IN list, none an error; long IN lists
are cut into statements of at most IN_CHUNK values."""

import pytest

from intent_contract.sql_text import IN_CHUNK, in_chunks, marks, one_of


def test_one_value_is_an_equality_several_an_in_list() -> None:
    assert one_of("state", ["queued"]) == "state = 'queued'"
    assert one_of("intents.state", ["failed", "expired"]) == "intents.state IN ('failed', 'expired')"


def test_no_value_is_refused() -> None:
    with pytest.raises(ValueError, match="no values for state"):
        one_of("state", [])


def test_marks_are_one_placeholder_per_value() -> None:
    assert marks(["a", "b", "c"]) == "?,?,?"
    assert marks(range(1)) == "?"


def test_in_chunks_cover_every_value_once_in_order_with_their_marks() -> None:
    values = list(range(2 * IN_CHUNK + 1))
    chunks = list(in_chunks(values))
    assert [len(chunk) for chunk, _ in chunks] == [IN_CHUNK, IN_CHUNK, 1]
    assert [v for chunk, _ in chunks for v in chunk] == values
    assert all(chunk_marks.count("?") == len(chunk) for chunk, chunk_marks in chunks)
    assert list(in_chunks([])) == []
