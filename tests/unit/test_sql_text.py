"""One value is `=` (what SQLite's partial indexes match), several an IN list, none an error."""

import pytest

from intent_contract.sql_text import marks, one_of


def test_one_value_is_an_equality_several_an_in_list() -> None:
    assert one_of("state", ["queued"]) == "state = 'queued'"
    assert one_of("intents.state", ["failed", "expired"]) == "intents.state IN ('failed', 'expired')"


def test_no_value_is_refused() -> None:
    with pytest.raises(ValueError, match="no values for state"):
        one_of("state", [])


def test_marks_are_one_placeholder_per_value() -> None:
    assert marks(["a", "b", "c"]) == "?,?,?"
    assert marks(range(1)) == "?"
