"""A tenant's own providers and share in the config file: the shape of the top-level integrations, secrets
only by *_env or file and never printed, http.request policy checked against the tenant's own credentials."""

from __future__ import annotations

import pytest

from cloud_bridge.config import load_config
from cloud_bridge.errors import ConfigError
from cloud_bridge.fair_share import Share
from cloud_bridge.integrations import build_tenant_integrations
from cloud_bridge.policy import DeviceRef

CANARY = "canary-TENANT-4b7e"
OWN_SMTP = {"host": "mail.bravo.example", "username": "bravo", "password_env": "BRAVO_SMTP"}


def document(**bravo: object) -> dict[str, object]:
    return {
        "integrations": {"smtp": {"host": "relay.vendor.example"}},
        "tenants": {
            "acme": {"policy": {"kinds": ["email.send"]}},
            "bravo": {"policy": {"kinds": ["email.send"]}, **bravo},
        },
    }


def test_a_tenant_brings_its_own_provider_with_its_secret_from_the_environment() -> None:
    config = load_config(document(integrations={"smtp": OWN_SMTP}), {"BRAVO_SMTP": CANARY})
    own = config.tenants["bravo"].integrations.smtp
    assert own is not None and own.host == "mail.bravo.example"
    assert own.needed("password").reveal() == CANARY
    assert config.tenants["acme"].integrations.smtp is None
    assert CANARY not in repr(config) and CANARY not in str(config.model_dump())
    built = build_tenant_integrations(config.tenants)
    assert sorted(built) == ["bravo"]
    assert sorted(built["bravo"]) == ["email.send"]
    assert CANARY not in repr(built)


def test_a_tenant_secret_written_in_the_file_or_missing_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as written:
        load_config(document(integrations={"smtp": {**OWN_SMTP, "password": CANARY}}), {})
    assert "tenants.bravo.integrations.smtp: 'password' must not be written in the config file" in written.value.detail
    assert CANARY not in written.value.detail
    with pytest.raises(ConfigError) as missing:
        load_config(document(integrations={"smtp": OWN_SMTP}), {})
    # The key, not the variable's name (which may be a secret written in its place).
    assert "tenants.bravo.integrations.smtp: password_env: the environment variable it names is not set" in (
        missing.value.detail
    )
    assert "BRAVO_SMTP" not in missing.value.detail


def test_shares_are_typed_and_bounded() -> None:
    config = load_config(document(limits={"weight": 2.5, "max_share": 0.5}), {})
    shares = config.shares()
    assert shares.of("bravo") == Share(2.5, 0.5)
    assert shares.of("acme") == Share()
    assert shares.of("unknown") == Share()
    with pytest.raises(ConfigError) as bad:
        load_config(document(limits={"weight": 0, "max_share": 1.5, "burst": 3}), {})
    for problem in ("tenants.bravo.limits.weight", "tenants.bravo.limits.max_share", "tenants.bravo.limits.burst"):
        assert problem in bad.value.detail


def test_http_policy_is_checked_against_the_tenants_own_credentials() -> None:
    own_http = {"credentials": {"crm": {"base_urls": ["https://crm.bravo.example/api/"], "token_env": "BRAVO_CRM"}}}
    policy = {"kinds": ["http.request"], "http_credentials": ["crm"], "http_scope": {"crm": {"methods": ["POST"]}}}
    doc = {"tenants": {"bravo": {"policy": policy, "integrations": {"http": own_http}}}}
    config = load_config(doc, {"BRAVO_CRM": CANARY})
    engine = config.policy()
    device = DeviceRef("dev-b", "bravo", "pump-1")
    inside = {"credential": "crm", "method": "POST", "url": "https://crm.bravo.example/api/tickets"}
    outside = {**inside, "url": "https://crm.vendor.example/api/tickets"}
    assert engine.check(device, "http.request", inside).allowed
    refused = engine.check(device, "http.request", outside)
    assert (refused.allowed, refused.code) == (False, "policy_url")
    # Without its own credential, a tenant's scope has nothing to narrow.
    with pytest.raises(ConfigError, match=r"no \[integrations\.http\] credential"):
        load_config({"tenants": {"bravo": {"policy": policy}}}, {})


def test_policy_names_only_credentials_and_targets_the_tenants_devices_can_use() -> None:
    """A name in `http_credentials` or `notify_targets` that the integration serving the tenant does not
    have refused every such intent at admission; the file is refused instead, naming the key. A tenant
    with its own http.request account sees only its own credentials, not the vendor's."""
    vendor_http = {"credentials": {"crm": {"base_urls": ["https://crm.vendor.example/"], "token_env": "CRM"}}}
    vendor_notify = {"targets": {"oncall": {"urls_env": "PAGER"}}}
    env = {"CRM": CANARY, "PAGER": "json://127.0.0.1:9/", "BRAVO_CRM": CANARY}

    def doc(acme: dict[str, object], bravo_own: dict[str, object] | None = None, **more: object) -> dict[str, object]:
        bravo: dict[str, object] = {"policy": {"kinds": ["http.request"], "http_credentials": ["crm"]}}
        if bravo_own is not None:
            bravo["integrations"] = {"http": bravo_own}
        tenants = {"acme": {"policy": acme, **more}, "bravo": bravo}
        return {"integrations": {"http": vendor_http, "notify": vendor_notify}, "tenants": tenants}

    load_config(doc({"http_credentials": ["crm"], "notify_targets": ["oncall"]}), env).policy()
    with pytest.raises(ConfigError) as typo:
        load_config(doc({"http_credentials": ["cmr"]}), env)
    assert "tenants.acme.policy.http_credentials: unknown credentials ['cmr']; configured: ['crm']" in typo.value.detail
    with pytest.raises(ConfigError) as target:
        load_config(doc({}, devices={"pump-1": {"policy": {"notify_targets": ["pager"]}}}), env)
    assert "tenants.acme.devices.pump-1.policy.notify_targets: unknown targets ['pager']" in target.value.detail
    own = {"credentials": {"tickets": {"base_urls": ["https://crm.bravo.example/"], "token_env": "BRAVO_CRM"}}}
    with pytest.raises(ConfigError) as vendors:
        load_config(doc({}, own), env)
    assert "tenants.bravo.policy.http_credentials: unknown credentials ['crm']; configured: ['tickets']" in (
        vendors.value.detail
    )
    assert CANARY not in typo.value.detail + target.value.detail + vendors.value.detail


def test_every_tenants_and_devices_policy_problem_is_reported_at_once() -> None:
    """docs/config.md: every problem of the file at once. Policy naming what the integrations lack was
    reported one at a time: the first tenant's first problem, and the next only after it was fixed."""
    http = {"credentials": {"crm": {"base_urls": ["https://crm.vendor.example/v1/"], "token_env": "CRM"}}}
    acme = {"policy": {"kinds": ["http.request"], "http_credentials": ["cmr"], "notify_targets": ["pager"]}}
    bravo = {
        "policy": {"kinds": ["http.request"], "http_credentials": ["crm"]},
        "devices": {
            "pump-1": {"policy": {"http_credentials": ["crn"]}},
            "pump-2": {"policy": {"http_scope": {"crm": {"base_urls": ["https://elsewhere.example/"]}}}},
        },
    }
    notify = {"targets": {"oncall": {"urls_env": "PAGER"}}}
    document = {"integrations": {"http": http, "notify": notify}, "tenants": {"acme": acme, "bravo": bravo}}
    with pytest.raises(ConfigError) as refused:
        load_config(document, {"CRM": CANARY, "PAGER": "json://127.0.0.1:9/"})
    problems = [
        "tenants.acme.policy.http_credentials: unknown credentials ['cmr']",
        "tenants.acme.policy.notify_targets: unknown targets ['pager']",
        "tenants.bravo.devices.pump-1.policy.http_credentials: unknown credentials ['crn']",
        "tenants.bravo.devices.pump-2.policy.http_scope.crm.base_urls: entry 0 not under the credential's own",
    ]
    assert [p in refused.value.detail for p in problems] == [True] * len(problems), refused.value.detail
    assert CANARY not in refused.value.detail
