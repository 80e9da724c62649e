"""A tenant's own rate and daily quota (all its devices together): decided by policy from the config, spent
by the pure admission plan beside the device's, a refusal by either spending neither."""

from __future__ import annotations

from cloud_bridge.config import load_config
from cloud_bridge.ledger_plan import Request, Verdict, body_digest, plan_admission, tenant_limited_kinds
from cloud_bridge.ledger_states import LedgerEvent
from cloud_bridge.policy import DeviceRef
from cloud_bridge.ratelimit import Limits, LimitState, QuotaCount, RateRule, tenant_subject, utc_day
from intent_contract.codec import Envelope

NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")
MAIL = {"to": ["ops@acme.example"], "subject": "s", "text": "t"}


def request(ident: str, verdict: Verdict) -> Request:
    envelope = Envelope(ident, "hvac-ui", "email.send", int(NOW * 1000), None, 1, dict(MAIL))
    return Request(envelope, verdict, body_digest(envelope))


def test_policy_carries_the_tenants_own_limits_beside_the_devices() -> None:
    policy = {"kinds": ["email.send", "sms.send"], "email_domains": ["acme.example"], "email_from": "a@acme.example",
              "daily_quota": {"email.send": 50}}  # fmt: skip
    limits = {"rate": {"email.send": {"per_minute": 600, "burst": 100}}, "daily_quota": {"email.send": 1000}}
    config = load_config({"tenants": {"acme": {"policy": policy, "limits": {**limits, "weight": 2.0}}}}, {})
    decision = config.policy().check(DEV, "email.send", MAIL)
    assert decision.allowed, decision
    assert decision.limits == Limits(None, 50)
    assert decision.tenant_limits == Limits(RateRule(rate=10.0, burst=100), 1000)
    # A kind without limits of either carries none; another tenant's limits are not these.
    sms = config.policy().check(DEV, "sms.send", {"to": "+15550100", "text": "t"})
    assert sms.allowed and not sms.tenant_limits.any
    other = load_config({"tenants": {"acme": {"policy": policy}}}, {}).policy().check(DEV, "email.send", MAIL)
    assert other.allowed and not other.tenant_limits.any


def test_the_tenants_quota_is_spent_with_the_devices_and_a_refusal_spends_neither() -> None:
    verdict = Verdict(LedgerEvent.QUEUE, limits=Limits(daily_quota=10), tenant_limits=Limits(daily_quota=2))
    batch = [request("a", verdict), request("b", verdict), request("c", verdict)]
    assert tenant_limited_kinds(batch) == {"email.send"}
    plan = plan_admission(DEV, batch, {}, {}, NOW)
    assert [(a.id, a.code) for a in plan.acks] == [("a", ""), ("b", ""), ("c", "quota_exceeded")]
    assert plan.acks[2].detail.startswith("tenant's daily quota of 2 email.send")
    day = utc_day(NOW)
    # The device spent two (the refused third spent nothing of its own quota), the tenant two.
    assert plan.limits == {"email.send": LimitState(None, QuotaCount(day, 2))}
    assert plan.tenant_limits == {"email.send": LimitState(None, QuotaCount(day, 2))}
    # With the tenant's state as another device left it, this device's first is refused at once.
    spent = {"email.send": LimitState(None, QuotaCount(day, 2))}
    again = plan_admission(DEV, [request("d", verdict)], {}, {}, NOW, spent)
    assert again.acks[0].code == "quota_exceeded"
    assert again.limits == {}


def test_the_devices_limit_refuses_first_and_spends_nothing_of_the_tenants() -> None:
    verdict = Verdict(LedgerEvent.QUEUE, limits=Limits(daily_quota=1), tenant_limits=Limits(daily_quota=5))
    plan = plan_admission(DEV, [request("a", verdict), request("b", verdict)], {}, {}, NOW)
    assert [a.code for a in plan.acks] == ["", "quota_exceeded"]
    assert not plan.acks[1].detail.startswith("tenant's")
    assert plan.tenant_limits["email.send"].quota == QuotaCount(utc_day(NOW), 1)


def test_a_tenant_subject_is_never_a_device_id() -> None:
    from intent_contract.names import is_name

    assert not is_name(tenant_subject("acme"))
