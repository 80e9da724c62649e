"""Policy decisions: kinds, recipients, from-address, credentials, targets, SMS prefixes, tenants."""

from __future__ import annotations

from typing import Any

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.policy import Decision, DeviceRef, PolicyEngine

CONFIG: dict[str, Any] = {
    "acme": {
        "policy": {
            "kinds": ["email.send", "http.request", "notify", "sms.send"],
            "email_domains": ["example.com", "Ops.Example.ORG"],
            "email_from": "alerts@acme.example",
            "http_credentials": ["crm"],
            "notify_targets": ["oncall"],
            "sms_prefixes": ["+49", "+1"],
        },
        "devices": {
            "boiler-7": {"policy": {"kinds": ["email.send"]}},
            "ui-1": {"policy": {"allow_app_from": True}},
        },
    },
    "empty": {},
}

DEV = DeviceRef("d-1", "acme", "pump-1")


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine.from_config(CONFIG)


def email(**extra: Any) -> dict[str, Any]:
    return {"to": "ops@example.com", "subject": "s", "text": "t", **extra}


def test_allowed_email_gets_the_configured_from(engine: PolicyEngine) -> None:
    decision = engine.check(DEV, "email.send", email())
    assert decision == Decision(True, overrides={"from": "alerts@acme.example"})


def test_unknown_tenant_is_policy_tenant(engine: PolicyEngine) -> None:
    decision = engine.check(DeviceRef("d-9", "globex", "x"), "email.send", email())
    assert (decision.allowed, decision.code) == (False, "policy_tenant")


def test_tenant_without_policy_allows_nothing(engine: PolicyEngine) -> None:
    decision = engine.check(DeviceRef("d-9", "empty", "x"), "email.send", email())
    assert decision.code == "policy_kind"


def test_empty_config_rejects_every_kind() -> None:
    engine = PolicyEngine.from_config({})
    assert engine.check(DEV, "notify", {"target": "oncall", "body": "b"}).code == "policy_tenant"


@pytest.mark.parametrize(
    ("payload", "allowed"),
    [
        (email(to="a@example.com"), True),
        (email(to="A@EXAMPLE.COM"), True),
        (email(to=["a@example.com", "b@ops.example.org"]), True),
        (email(to="a@sub.example.com"), False),  # subdomains are not implied
        (email(to="a@example.com.evil"), False),
        (email(to="a@evil.com"), False),
        (email(cc="a@evil.com"), False),
        (email(bcc=["a@example.com", "b@evil.com"]), False),
        (email(to="<a@example.com>"), False),
        (email(to="a@example.com "), False),
        # Read by aiosmtplib as RCPT TO:<root>, <postmaster>, <a>: not example.com recipients at all.
        (email(to="root)@example.com"), False),
        (email(to="postmaster;@example.com"), False),
        (email(cc="a<@example.com"), False),
        (email(bcc='"a@evil.com"@example.com'), False),
        (email(to="\u00e9@example.com"), False),  # non-ASCII: SMTPUTF8 only, folded badly without it
        (email(to=[]), False),
        (email(to=7), False),
    ],
)
def test_recipient_domains_are_exact_and_case_insensitive(
    engine: PolicyEngine, payload: dict[str, Any], allowed: bool
) -> None:
    decision = engine.check(DEV, "email.send", payload)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.code == "policy_recipient"


@pytest.mark.parametrize(
    ("reply_to", "allowed"),
    [
        ("desk@example.com", True),
        ("desk@Ops.Example.org", True),
        ("desk@acme.example", True),  # the configured From's domain
        ("desk@evil.com", False),
        ("desk@sub.example.com", False),
        ("x" * 39 + "=?:From:ceo@evil.com\u00e9,", False),  # folded into a From: line of its own
        ("x@[", False),
        ("Desk <desk@example.com>", False),
        ("a@example.com,b@evil.com", False),
        (["desk@example.com"], True),
        (["desk@example.com", "x@evil.com"], False),
        (7, False),
    ],
)
def test_reply_to_is_one_plain_mailbox_in_an_allowed_domain(engine: PolicyEngine, reply_to: Any, allowed: bool) -> None:
    decision = engine.check(DEV, "email.send", email(reply_to=reply_to))
    assert decision.allowed is allowed
    if not allowed:
        assert decision.code == "policy_recipient"
        assert "reply_to" in decision.detail


def test_app_from_refused_unless_allowed(engine: PolicyEngine) -> None:
    refused = engine.check(DEV, "email.send", email(**{"from": "ceo@example.com"}))
    assert refused.code == "policy_from"
    same = engine.check(DEV, "email.send", email(**{"from": "Alerts@acme.example"}))
    assert same.overrides == {"from": "alerts@acme.example"}
    ui = DeviceRef("d-2", "acme", "ui-1")
    honoured = engine.check(ui, "email.send", email(**{"from": "ceo@example.com"}))
    assert honoured == Decision(True, overrides={"from": "ceo@example.com"})


def test_no_configured_from_is_policy_from() -> None:
    engine = PolicyEngine.from_config({"t": {"policy": {"kinds": ["email.send"], "email_domains": ["example.com"]}}})
    decision = engine.check(DeviceRef("d", "t", "n"), "email.send", email())
    assert decision.code == "policy_from"


def test_device_override_replaces_tenant_keys(engine: PolicyEngine) -> None:
    boiler = DeviceRef("d-7", "acme", "boiler-7")
    assert engine.check(boiler, "email.send", email()).allowed
    assert engine.check(boiler, "notify", {"target": "oncall", "body": "b"}).code == "policy_kind"
    # Another tenant's device with the same name does not get acme's override.
    assert engine.check(DeviceRef("d-8", "empty", "boiler-7"), "email.send", email()).code == "policy_kind"


@pytest.mark.parametrize(
    ("kind", "payload", "code"),
    [
        ("http.request", {"credential": "crm", "method": "GET", "path": "/x"}, ""),
        ("http.request", {"credential": "billing", "method": "GET", "path": "/x"}, "policy_credential"),
        ("notify", {"target": "oncall", "body": "b"}, ""),
        ("notify", {"target": "ceo", "body": "b"}, "policy_target"),
        ("sms.send", {"to": "+4915112345678", "text": "t"}, ""),
        ("sms.send", {"to": "+15551234567", "text": "t"}, ""),
        ("sms.send", {"to": "+447700900123", "text": "t"}, "policy_recipient"),
        ("webhook.fire", {}, "policy_kind"),
    ],
)
def test_kind_specific_rules(engine: PolicyEngine, kind: str, payload: dict[str, Any], code: str) -> None:
    decision = engine.check(DEV, kind, payload)
    assert (decision.allowed, decision.code) == (code == "", code)


def test_sms_without_prefixes_allows_any_number() -> None:
    engine = PolicyEngine.from_config({"t": {"policy": {"kinds": ["sms.send"]}}})
    assert engine.check(DeviceRef("d", "t", "n"), "sms.send", {"to": "+81312345678", "text": "t"}).allowed


@pytest.mark.parametrize(
    "policy",
    [
        {"kinds": ["email.sendx"]},
        {"kinds": "email.send"},
        {"email_from": "not an address"},
        {"allow_app_from": "yes"},
        {"sms_prefixes": ["49"]},
        {"rate": {"email.send": {"per_minute": 0}}},
        {"rate": {"email.send": {"per_minute": 5, "per_hour": 5}}},
        {"rate": {"email.send": {"per_minute": 5, "burst": 0}}},
        {"rate": {"fax.send": {"per_minute": 5}}},
        {"daily_quota": {"email.send": -1}},
        {"http_credentials": ["bad name!"]},
        {"kindz": ["email.send"]},
    ],
)
def test_bad_policy_is_config_error(policy: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PolicyEngine.from_config({"t": {"policy": policy}})


def test_bad_device_override_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tenants\.t\.devices\.n\.policy"):
        PolicyEngine.from_config({"t": {"policy": {}, "devices": {"n": {"policy": {"kinds": ["nope"]}}}}})


def test_decision_validates_codes() -> None:
    with pytest.raises(ValueError, match="unknown policy code"):
        Decision(False, "made_up")
    with pytest.raises(ValueError, match="no code"):
        Decision(True, "policy_kind")
