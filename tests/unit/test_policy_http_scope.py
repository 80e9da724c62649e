"""http.request at admission: URL and method against the credential's scope, narrowed by tenant and device."""

from __future__ import annotations

from typing import Any

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.integrations.url_scope import credential_scopes
from cloud_bridge.policy import DeviceRef, PolicyEngine

INTEGRATIONS: dict[str, Any] = {
    "http": {
        "credentials": {
            "crm": {
                "base_urls": ["https://api.crm.example/v1/", "https://hooks.crm.example/"],
                "methods": ["GET", "POST", "DELETE"],
                "token_env": "X",
            },
            "billing": {"base_urls": ["https://billing.example/"], "token_env": "Y"},
        }
    }
}
SCOPES = credential_scopes(INTEGRATIONS)
POLICY: dict[str, Any] = {
    "kinds": ["http.request"],
    "http_credentials": ["crm"],
    "http_scope": {"crm": {"base_urls": ["https://api.crm.example/v1/acme/"], "methods": ["GET", "POST"]}},
    "rate": {"http.request": {"per_minute": 1, "burst": 1}},
}
TENANTS: dict[str, Any] = {
    "acme": {
        "policy": POLICY,
        "devices": {
            "reader": {"policy": {"http_scope": {"crm": {"methods": ["GET"]}}}},
            "wide-open": {"policy": {"http_scope": {}}},
        },
    }
}
TENANT_DEVICE = DeviceRef("d-1", "acme", "pump-1")
READER = DeviceRef("d-2", "acme", "reader")


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine.from_config(TENANTS, SCOPES)


def request(method: str = "GET", **where: str) -> dict[str, Any]:
    return {"credential": "crm", "method": method, **(where or {"path": "/acme/contacts"})}


@pytest.mark.parametrize(
    ("device", "payload", "code"),
    [
        (TENANT_DEVICE, request(), ""),
        (TENANT_DEVICE, request(url="https://api.crm.example/v1/acme/x?y=1"), ""),
        (TENANT_DEVICE, request(path="/other/contacts"), "policy_url"),  # the credential allows it; acme does not
        (TENANT_DEVICE, request(url="https://hooks.crm.example/x"), "policy_url"),
        (TENANT_DEVICE, request(path="/acme/..;/admin"), "policy_url"),
        (TENANT_DEVICE, request(path="/acme/%252e%252e/admin"), "policy_url"),
        (TENANT_DEVICE, request(url="https://evil.example/v1/acme/"), "policy_url"),
        (TENANT_DEVICE, request("DELETE"), "policy_method"),  # the credential allows it; acme does not
        (TENANT_DEVICE, request("PUT"), "policy_method"),
        (READER, request(), ""),
        (READER, request("POST"), "policy_method"),  # narrowed again by the device
        (DeviceRef("d-3", "acme", "wide-open"), request(path="/other/x"), "policy_url"),  # {} does not widen
        (TENANT_DEVICE, {**request(), "credential": "ghost"}, "policy_credential"),  # neither allowed nor configured
        (TENANT_DEVICE, {**request(), "credential": "billing"}, "policy_credential"),  # configured, not allowed
    ],
)
def test_url_and_method_are_decided_at_admission(
    engine: PolicyEngine, device: DeviceRef, payload: dict[str, Any], code: str
) -> None:
    decision = engine.check(device, "http.request", payload)
    assert (decision.allowed, decision.code) == (not code, code)


def test_a_refused_url_or_method_spends_no_rate_token(engine: PolicyEngine) -> None:
    """Limits are spent in the store at admission, only for what policy allowed (it hands them over)."""
    for payload in (request(path="/elsewhere"), request("DELETE")):
        refused = engine.check(TENANT_DEVICE, "http.request", payload)
        assert not refused.allowed and not refused.limits.any
    allowed = engine.check(TENANT_DEVICE, "http.request", request())
    assert allowed.allowed and allowed.limits.rate is not None


def test_without_an_http_integration_the_url_is_left_to_it() -> None:
    engine = PolicyEngine.from_config({"acme": {"policy": {**POLICY, "http_scope": {}}}})
    assert engine.check(TENANT_DEVICE, "http.request", request(path="/anything")).allowed


def test_a_narrowed_path_resolves_against_the_credentials_first_base() -> None:
    rules = PolicyEngine.from_config(TENANTS, SCOPES).rules_for(TENANT_DEVICE)
    assert rules is not None and rules.http_scopes is not None
    assert rules.http_scopes["crm"].request(request(), "crm") == ("GET", "https://api.crm.example:443/v1/acme/contacts")
    assert SCOPES is not None
    assert rules.http_scopes["billing"] == SCOPES["billing"]  # not narrowed: the credential's own


@pytest.mark.parametrize(
    ("tenant", "match"),
    [
        ({"policy": {**POLICY, "http_scope": {"nope": {"methods": ["GET"]}}}}, r"unknown credentials \['nope'\]"),
        # An allowed name no credential has would refuse every such intent: the file is refused instead.
        (
            {"policy": {**POLICY, "http_credentials": ["crm", "ghost"]}},
            r"http_credentials: unknown credentials \['ghost'\]",
        ),
        ({"policy": {**POLICY, "http_scope": {"crm": {"methods": ["PUT"]}}}}, r"\['PUT'\] not in"),
        ({"policy": {**POLICY, "http_scope": {"crm": {"base_urls": ["https://api.crm.example/v2/"]}}}}, "not under"),
        ({"policy": {**POLICY, "http_scope": {"crm": {"base_urls": ["http://api.crm.example/v1/"]}}}}, "not under"),
        (
            {"policy": {**POLICY, "http_scope": {"crm": {"base_urls": ["https://api.crm.example/v1/..;/"]}}}},
            "base_urls",
        ),
        ({"policy": {**POLICY, "http_scope": {"crm": {}}}}, "base_urls and/or methods"),
        ({"policy": {**POLICY, "http_scope": {"crm": {"method": ["GET"]}}}}, "base_urls and/or methods"),
        ({"policy": {**POLICY, "http_scope": ["crm"]}}, "keyed by credential name"),
        # A device narrows its tenant's scope; it cannot widen it back to the credential's.
        (
            {"policy": POLICY, "devices": {"x": {"policy": {"http_scope": {"crm": {"methods": ["DELETE"]}}}}}},
            r"tenants\.acme\.devices\.x\.policy\.http_scope\.crm\.methods",
        ),
        (
            {
                "policy": POLICY,
                "devices": {"x": {"policy": {"http_scope": {"crm": {"base_urls": ["https://hooks.crm.example/"]}}}}},
            },
            "not under",
        ),
    ],
)
def test_a_scope_that_widens_or_names_nothing_is_a_config_error(tenant: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PolicyEngine.from_config({"acme": tenant}, SCOPES)


def test_narrowing_without_http_credentials_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no \[integrations.http\]"):
        PolicyEngine.from_config({"acme": {"policy": POLICY}})


def test_credential_scopes_default_methods_and_no_http_section() -> None:
    assert SCOPES is not None
    assert SCOPES["billing"].methods == {"GET", "POST"}
    assert credential_scopes({}) is None
