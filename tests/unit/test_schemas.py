"""Every schema's examples: the valid ones pass, each invalid one fails."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.mailbox import MAX_LENGTH, PATTERN, is_mailbox
from intent_contract.errors import SchemaViolationError
from intent_contract.names import KINDS
from intent_contract.schemas import known_schemas, schema_dir, validate
from intent_contract.wire import MAX_ATTEMPT, MAX_TIME

EXAMPLES = {p.stem: json.loads(p.read_text()) for p in (schema_dir() / "examples").glob("*.json")}


def test_every_schema_has_examples() -> None:
    assert set(known_schemas()) == set(EXAMPLES)
    assert set(KINDS) < set(EXAMPLES)
    for name, ex in EXAMPLES.items():
        assert ex["valid"], name
        assert ex["invalid"], name


def test_the_kind_list_is_the_same_everywhere() -> None:
    # intent_contract.names.KINDS is the source; the envelope schema and the schema files must agree.
    envelope = json.loads((schema_dir() / "envelope.json").read_text())
    assert envelope["properties"]["kind"]["enum"] == list(KINDS)
    kind_files = {p.stem for p in schema_dir().glob("*.json")} - {"envelope", "common"}
    assert kind_files == set(KINDS)


def test_the_attempt_and_time_bounds_are_the_same_in_the_schema_and_the_ack_decoder() -> None:
    envelope = json.loads((schema_dir() / "envelope.json").read_text())
    assert envelope["properties"]["attempt"]["maximum"] == MAX_ATTEMPT
    assert envelope["properties"]["created"]["maximum"] == envelope["properties"]["expires"]["maximum"] == MAX_TIME


@pytest.mark.parametrize(("name", "doc"), [(n, d) for n, ex in EXAMPLES.items() for d in ex["valid"]])
def test_valid_examples_pass(name: str, doc: object) -> None:
    validate(name, doc)


@pytest.mark.parametrize(
    ("name", "case"),
    [(n, c) for n, ex in EXAMPLES.items() for c in ex["invalid"]],
    ids=lambda v: v["why"] if isinstance(v, dict) else v,
)
def test_invalid_examples_fail(name: str, case: dict[str, object]) -> None:
    with pytest.raises(SchemaViolationError) as info:
        validate(name, case["doc"])
    assert info.value.code == "schema_violation"
    assert info.value.detail


def test_unknown_kind_is_named() -> None:
    with pytest.raises(SchemaViolationError) as info:
        validate("fax.send", {})
    assert info.value.code == "unknown_kind"
    assert "email.send" in info.value.detail


def test_a_value_that_fits_one_branch_gets_that_branch_reason() -> None:
    # `to` is oneOf(address, list of addresses): a string can only be meant as an address.
    with pytest.raises(SchemaViolationError) as info:
        validate("email.send", {"to": "not-an-address", "subject": "S", "text": "t"})
    assert info.value.detail.startswith("to: ")
    assert "does not match" in info.value.detail


def test_a_value_that_fits_several_branches_gets_the_summary() -> None:
    with pytest.raises(SchemaViolationError) as info:
        validate("email.send", {"to": "ops@example.com", "subject": "no body"})
    assert "anyOf" in info.value.detail


def test_a_trailing_newline_does_not_pass_a_name_pattern() -> None:
    # Python's re lets "$" match before a final newline; the schema's patterns are anchored for real.
    with pytest.raises(SchemaViolationError):
        validate("email.send", {"to": "ops@example.com", "subject": "S", "text": "t", "id": "abc\n"})


@pytest.mark.parametrize(
    "payload",
    [
        {"to": "ops@example.com", "subject": b"binary", "text": "t"},  # msgpack's bin type
        {"to": "ops@example.com", "subject": "s", "text": "t", b"cc": "x@example.com"},  # a key that is not text
        {"to": "ops@example.com", "subject": "\ud800", "text": "t"},  # a lone surrogate
    ],
)
def test_what_json_has_no_word_for_is_a_schema_violation_not_a_crash(payload: dict[object, object]) -> None:
    with pytest.raises(SchemaViolationError, match="not JSON data") as caught:
        validate("email.send", payload)
    assert caught.value.code == "schema_violation"


@pytest.mark.parametrize(
    ("kind", "doc", "written_out"),
    [
        ("email.send", {"to": "a@b.example", "subject": "s", "text": "t", "x\x00y": 1}, "'x\\u0000y'"),
        (
            "http.request",
            {"credential": "c", "method": "POST", "path": "/p", "headers": {"a\nb\x7f": 5}},
            "a\\u000ab\\u007f",
        ),
    ],
)
def test_a_reason_that_quotes_control_characters_writes_them_out(kind: str, doc: object, written_out: str) -> None:
    # A detail is stored (PostgreSQL's text refuses U+0000) and sent in MQTT 5 strings (which must not hold it).
    with pytest.raises(SchemaViolationError) as refused:
        validate(kind, doc)
    assert written_out in refused.value.detail
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in refused.value.detail)


def test_the_email_pattern_is_the_bridges_mailbox_rule() -> None:
    # cloud_bridge.mailbox is the source; the schema refuses at the edge what the bridge would refuse.
    common = json.loads((schema_dir() / "common.json").read_text())
    assert common["$defs"]["email"]["pattern"] == PATTERN
    assert common["$defs"]["email"]["maxLength"] == MAX_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.emails(), st.text(alphabet='ab.@()<>;:,"[]\\ é=?', max_size=12)))
def test_the_schema_takes_every_address_the_bridge_takes(address: str) -> None:
    payload = {"to": address, "subject": "S", "text": "t"}
    if is_mailbox(address):
        validate("email.send", payload)
    elif any(c in address for c in '()<>;:,"[]\\ é'):
        with pytest.raises(SchemaViolationError):
            validate("email.send", payload)
