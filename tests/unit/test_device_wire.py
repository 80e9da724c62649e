"""Fleet health messages on the wire: round trips, the limits they fit, and every bad input refused."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent_contract.device_wire import (
    MAX_AGE_MS,
    Diagnosis,
    ErrorLine,
    FailingKind,
    clip,
    decode_diagnose,
    decode_diagnosis,
    decode_health,
    diagnosis_from_wire,
    encode_diagnose,
    encode_diagnosis,
    encode_health,
    health_from_wire,
)
from intent_contract.errors import DecodeError, UnsupportedVersionError
from intent_contract.wire import DIAGNOSIS_ERRORS, DIAGNOSIS_FAILING, REPORT_DETAIL, REPORT_LIMITS
from tests.support.fleet import sample_report

STATES = ("accepted", "forwarded", "delivered", "failed", "expired", "cancelled", "rejected")


def test_a_health_report_round_trips() -> None:
    sent = sample_report()
    assert decode_health(encode_health(sent)) == sent
    assert health_from_wire(sent.to_wire()) == sent
    quiet = sample_report(
        oldest_pending_age_ms=None, free_bytes=None, last_error=None, held=2, held_for_ms=3, held_reason="x"
    )
    assert decode_health(encode_health(quiet)) == quiet


def test_a_diagnose_request_and_a_diagnosis_round_trip() -> None:
    assert decode_diagnose(encode_diagnose("req-1")) == "req-1"
    with pytest.raises(ValueError, match="bad request id"):
        encode_diagnose("no spaces")
    diagnosis = Diagnosis(
        "req-1",
        sample_report(),
        (ErrorLine(1, "a", "b"),),
        (FailingKind("email.send", "smtp_550", 4),),
        86_400_000,
        "bridge.example:8883",
        "tcp",
        ("02:00-04:00",),
    )
    assert decode_diagnosis(encode_diagnosis(diagnosis)) == diagnosis
    assert diagnosis_from_wire(diagnosis.to_wire()) == diagnosis


def test_the_largest_diagnosis_an_edge_makes_fits_the_decoder() -> None:
    wide = "\U0001f525" * REPORT_DETAIL  # four bytes a character
    errors = tuple(ErrorLine(2**40, "c" * 64, clip(wide)) for _ in range(DIAGNOSIS_ERRORS))
    failing = tuple(FailingKind("k" * 64, "c" * 64, 2**40) for _ in range(DIAGNOSIS_FAILING))
    health = sample_report(last_error=errors[0], held_reason=clip(wide), software="v" * 64, clock_source="s" * 64)
    diagnosis = Diagnosis(
        "r" * 64, health, errors, failing, 2**40, "h" * REPORT_DETAIL, "websockets", ("00:00-01:00",) * 24
    )
    data = encode_diagnosis(diagnosis)
    assert len(data) < REPORT_LIMITS.max_bytes
    assert decode_diagnosis(data) == diagnosis


def _message(**changes: object) -> bytes:
    body = {"v": 1, **sample_report().to_wire(), **changes}
    return bytes(msgpack.packb({k: v for k, v in body.items() if v is not ...}, use_bin_type=True))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"pending": -1}, "pending must be a non-negative integer"),
        ({"pending": True}, "pending must be a non-negative integer"),
        ({"pending": ...}, "pending must be a non-negative integer"),
        ({"counts": {"bad name": 1}}, "counts must be a map"),
        ({"counts": {"accepted": "1"}}, "counts must be a map"),
        ({"software": "v" * 65}, "software must be a string"),
        ({"held_reason": "x" * (REPORT_DETAIL + 1)}, "held_reason must be a string"),
        ({"link": ...}, "link must be a map"),
        ({"link": {"state": "connected"}}, "link: for_ms must be"),
        ({"link": {**sample_report().link.to_wire(), "rate": float("nan")}}, "rate must be a non-negative number"),
        ({"last_error": {"age_ms": 1, "code": 7}}, "code must be a string"),
        ({"clock_offset_ms": 1.5}, "clock_offset_ms must be an integer"),
        # ages past 100 years: the views subtract them from dates (2^63 ms made `devices ls --json` fail)
        ({"last_error": {"age_ms": MAX_AGE_MS + 1, "code": "c", "detail": ""}}, "age_ms must be an age"),
        ({"oldest_pending_age_ms": 2**63 - 1}, "oldest_pending_age_ms must be an age"),
        ({"held_for_ms": MAX_AGE_MS + 1}, "held_for_ms must be an age"),
        ({"link": {**sample_report().link.to_wire(), "for_ms": 2**62}}, "for_ms must be an age"),
        ({"v": "1"}, "integer 'v'"),
    ],
)
def test_a_bad_report_is_refused_with_the_field_named(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_health(_message(**changes))


def test_control_characters_in_text_are_written_out() -> None:
    """The dashboard and `cloud-bridge devices` show these strings: an ESC from a device must not reach a
    terminal, nor a NUL a page."""
    error = {"age_ms": MAX_AGE_MS, "code": "c\x1b[2J", "detail": "a\x00b\nc"}
    report = decode_health(_message(software="1.0\x07\u202e", last_error=error))
    assert (report.software, report.last_error) == (
        "1.0\\u0007\\u202e",
        ErrorLine(MAX_AGE_MS, "c\\u001b[2J", "a\\u0000b\\u000ac"),
    )
    diagnosis = Diagnosis("r", sample_report(), (), (FailingKind("k\x00", "c", 1),), 1, "b\x1b", "mqtt", ("0\x00",))
    decoded = decode_diagnosis(encode_diagnosis(diagnosis))
    assert (decoded.failing[0].kind, decoded.bridge, decoded.windows) == ("k\\u0000", "b\\u001b", ("0\\u0000",))


def test_unknown_fields_are_ignored_and_other_versions_are_unsupported() -> None:
    assert decode_health(_message(extra="from a newer edge")) == sample_report()
    with pytest.raises(UnsupportedVersionError, match="wire version 2"):
        decode_health(_message(v=2))
    with pytest.raises(UnsupportedVersionError):
        decode_diagnose(msgpack.packb({"v": 9, "id": "x"}))


def test_size_and_depth_limits_hold_before_any_field_is_read() -> None:
    with pytest.raises(DecodeError, match="over the"):
        decode_health(b"\x80" * (REPORT_LIMITS.max_bytes + 1))
    deep: object = 1
    for _ in range(REPORT_LIMITS.max_depth + 1):
        deep = [deep]
    with pytest.raises(DecodeError, match="nested deeper"):
        decode_health(_message(link=deep))
    with pytest.raises(DecodeError):
        decode_diagnosis(msgpack.packb({"v": 1, "id": "r", "errors": [{}] * (REPORT_LIMITS.max_items + 1)}))
    with pytest.raises(DecodeError, match="errors must be a list of at most"):
        decode_diagnosis(
            encode_diagnosis(
                Diagnosis("r", sample_report(), (ErrorLine(1, "c", "d"),) * (DIAGNOSIS_ERRORS + 1), (), 1, "", "")
            )
        )


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    for decode in (decode_health, decode_diagnose, decode_diagnosis):
        with contextlib.suppress(DecodeError):
            decode(data)
