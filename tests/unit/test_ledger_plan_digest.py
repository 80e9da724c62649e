"""A body's digest is the one stored digests were made with: the C encoder built once writes what json.dumps does."""

import json
import re

import pytest
from hypothesis import example, given

from cloud_bridge.ledger_plan import body_digest, canonical_text
from intent_contract.codec import Envelope
from tests.support.msgpack_values import TEXT_KEYS, msgpack_values

# What a payload decoded from msgpack may hold: JSON's values, floats with NaN and the infinities, integers past
# 64 bits' signed range, text beyond ASCII, binary values (str() of them, as json.dumps's default=str writes).
values = msgpack_values(TEXT_KEYS)


def standard(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


@given(values)
@example({"b": [1.5, 1e16, -0.0, "é\u2028\x00"], "a": {"z": None, "é": b"\xff"}})
@example(float("nan"))
def test_the_canonical_text_is_json_dumps_with_the_same_options(value: object) -> None:
    try:
        expected = standard(value)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            canonical_text(value)
    else:
        assert canonical_text(value) == expected


def test_a_digest_stored_before_is_the_digest_now() -> None:
    envelope = Envelope("id-1", "hvac", "http.request", 1, None, 1, {"method": "POST", "json": {"é": [1.5, None]}})
    # What admission wrote into the ledgers for this body before the encoder was built once (e59b736).
    assert body_digest(envelope) == "5e05ed778d7e5f8ba18e29b719afa617"
