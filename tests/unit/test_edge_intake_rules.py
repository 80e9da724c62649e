"""Every kind of bad input becomes a Refused with its own code; good input is Admitted."""

import itertools
import json

import pytest

from edge_outbox.intake_rules import MAX_PAYLOAD_BYTES, Admitted, Refused, admit, split_topic

NOW = 1_800_000_000_000
counter = itertools.count()


def new_id() -> str:
    return f"gen{next(counter)}"


GOOD = {"to": "ops@example.com", "subject": "Alarm", "text": "Boiler 3 hot"}


def run(topic: str, body: object) -> Admitted | Refused:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return admit(topic, raw, NOW, new_id)


def test_good_intent_gets_an_id_and_no_deadline() -> None:
    result = run("outbox/hvac-ui/email.send", GOOD)
    assert isinstance(result, Admitted)
    assert result.id.startswith("gen") and not result.id_given
    assert (result.app, result.kind, result.expires, result.priority) == ("hvac-ui", "email.send", None, 0)


def test_app_id_ttl_and_priority_are_honoured() -> None:
    result = run("outbox/hvac/email.send", {**GOOD, "id": "alarm-7", "ttl": 60, "priority": 7})
    assert isinstance(result, Admitted)
    assert (result.id, result.id_given, result.expires, result.priority) == ("alarm-7", True, NOW + 60_000, 7)
    at = run("outbox/hvac/email.send", {**GOOD, "expires_at": "2030-01-01T00:00:00Z"})
    assert isinstance(at, Admitted)
    assert at.expires == 1893456000000


@pytest.mark.parametrize(
    ("topic", "body", "code"),
    [
        ("outbox/hvac", GOOD, "bad_topic"),
        ("outbox/hvac/email.send/extra", GOOD, "bad_topic"),
        ("outbox/bad app!/email.send", GOOD, "bad_app"),
        ("outbox/hvac/fax.send", GOOD, "unknown_kind"),
        ("outbox/hvac/email.send", b"{not json", "bad_json"),
        ("outbox/hvac/email.send", b"\xff\xfe", "bad_json"),
        ("outbox/hvac/email.send", b"[1, 2]", "bad_json"),
        ("outbox/hvac/email.send", b'{"to": NaN}', "bad_json"),
        ("outbox/hvac/email.send", b'{"to": "ops@example.com", "subject": "\\ud800", "text": "x"}', "bad_json"),
        (
            "outbox/hvac/http.request",
            b'{"credential": "c", "method": "GET", "path": "/", "json": "\\udc00"}',
            "bad_json",
        ),
        ("outbox/hvac/http.request", b'{"credential": "c", "method": "GET", "path": "/", "json": 1e999}', "bad_json"),
        ("outbox/hvac/email.send", b'{"n": 99999999999999999999999}', "bad_json"),
        ("outbox/hvac/email.send", b"[" * 40 + b"]" * 40, "bad_json"),
        ("outbox/hvac/email.send", b"[" * 5000 + b"]" * 5000, "bad_json"),
        ("outbox/hvac/email.send", {**GOOD, "id": "has space"}, "bad_id"),
        ("outbox/hvac/email.send", {**GOOD, "id": 7}, "bad_id"),
        ("outbox/hvac/email.send", {"to": "ops@example.com"}, "schema_violation"),
        ("outbox/hvac/email.send", {**GOOD, "expires_at": "soon"}, "bad_expiry"),
        ("outbox/hvac/email.send", {**GOOD, "text": "x" * MAX_PAYLOAD_BYTES}, "too_large"),
    ],
)
def test_bad_input_is_refused_with_its_code(topic: str, body: object, code: str) -> None:
    result = run(topic, body)
    assert isinstance(result, Refused), result
    assert result.code == code
    assert result.detail
    assert len(result.payload) <= 4096
    assert result.size > 0


def test_refused_keeps_a_valid_app_id_for_its_status() -> None:
    result = run("outbox/hvac/email.send", {"id": "mine-1", "to": "x"})
    assert isinstance(result, Refused)
    assert result.id == "mine-1"


def test_split_topic() -> None:
    assert split_topic("outbox/a/email.send") == ("a", "email.send")
    assert split_topic("outbox/a/status/x") is None
    assert split_topic("other/a/b") is None


@pytest.mark.parametrize(
    ("number", "admitted"),
    [
        (10**18 - 1, True),  # 18 digits: the intake does not walk the document for these
        (2**63 - 1, True),
        (2**64 - 1, True),  # 20 digits, still what msgpack carries
        (2**64, False),
        (-(2**63), True),
        (-(2**63) - 1, False),  # 19 digits
        (-(10**40), False),
    ],
)
def test_integers_must_fit_64_bits_at_any_depth(number: int, admitted: bool) -> None:
    body = {"credential": "sink", "method": "POST", "path": "/hook", "json": {"deep": [{"n": number}]}}
    result = run("outbox/hvac/http.request", body)
    assert isinstance(result, Admitted if admitted else Refused), result
    if not admitted:
        assert isinstance(result, Refused) and (result.code, result.detail) == (
            "bad_json",
            "integer out of the 64-bit range",
        )


def test_long_runs_of_digits_in_strings_are_not_integers() -> None:
    body = {"credential": "sink", "method": "POST", "path": "/hook", "json": {"card": "4" * 40, "n": 7}}
    assert isinstance(run("outbox/hvac/http.request", body), Admitted)


@pytest.mark.parametrize(
    ("topic", "code", "app", "kind"),
    [
        ("outbox/app\nFAKE line\x1b[31m/email.send", "bad_app", "app\\u000aFAKE line\\u001b[31m", "email.send"),
        ("outbox/app1/email.send\x07", "unknown_kind", "app1", "email.send\\u0007"),
        ("outbox/a\x00b/email.send", "bad_app", "a\\u0000b", "email.send"),
        ("outbox/x\x9b/y/z", "bad_topic", "x\\u009b", ""),
    ],
)
def test_a_refused_app_or_kind_is_kept_with_its_control_characters_written_out(
    topic: str, code: str, app: str, kind: str
) -> None:
    result = run(topic, {**GOOD, "id": "ctl-1"})
    assert isinstance(result, Refused)
    assert (result.id, result.code, result.app, result.kind) == ("ctl-1", code, app, kind)
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in result.detail)


def test_a_refused_app_is_kept_cut_to_80_characters() -> None:
    result = run(f"outbox/{'a' * 70_000}/email.send", GOOD)
    assert isinstance(result, Refused)
    assert (result.code, result.app) == ("bad_app", "a" * 80)
    assert len(result.detail) < 200
