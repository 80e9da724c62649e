"""`[tenants.*]`: each tenant's policy, its devices' overrides, its own providers and its share, typed to the leaves.

`cloud_bridge.policy` decides with these (`PolicyEngine.from_config` reads the tables as given); the
checks that tie a policy to the integrations (an `http_scope` may only narrow a configured
credential, the tenant's own when it brings `[tenants.T.integrations.http]`) run when the whole file
is read (`BridgeConfig`). A tenant's `integrations` have the shape of the top-level `[integrations]`
and replace the vendor's, kind by kind, for that tenant's devices (docs/tenants.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from cloud_bridge.config.fields import Kind, Name, Positive, PositiveInt, Section, Text, invalid
from cloud_bridge.config.integrations import IntegrationsConfig, Method
from cloud_bridge.integrations.url_scope import UrlScope

_PERIODS = ("per_second", "per_minute", "per_hour")


def _address(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if any(c.isspace() for c in value) or not (at and local and domain) or "@" in local:
        raise invalid("must be an email address")
    return value


def _prefix(value: str) -> str:
    if not (value.startswith("+") and value[1:].isdigit()):
        raise invalid("must be '+' and digits")
    return value


class RateConfig(Section):
    """`rate."KIND"`: a token bucket; exactly one of the periods."""

    per_second: Positive | None = Field(None, description="intents per second")
    per_minute: Positive | None = Field(None, description="intents per minute")
    per_hour: Positive | None = Field(None, description="intents per hour")
    burst: PositiveInt | None = Field(None, description="bucket size; default: the rate rounded up")

    def problems(self, env: Mapping[str, str]) -> list[str]:
        if sum(getattr(self, p) is not None for p in _PERIODS) != 1:
            return [f"needs exactly one of {', '.join(_PERIODS)}"]
        return []


class ScopeConfig(Section):
    """`http_scope.CREDENTIAL`: narrows a credential's base URLs and methods for a tenant or device."""

    base_urls: list[str] | None = Field(None, description="under the credential's own base URLs")
    methods: list[Method] | None = Field(None, description="among the credential's own methods")

    def problems(self, env: Mapping[str, str]) -> list[str]:
        return ["give base_urls and/or methods"] if self.base_urls is None and self.methods is None else []


class PolicyConfig(Section):
    """`[tenants.T.policy]`, and a device's `[tenants.T.devices.N.policy]`, whose keys replace the tenant's."""

    kinds: list[Kind] = Field([], description="intent kinds allowed (none: every intent is rejected)")
    email_domains: list[Text] = Field([], description="recipient domains allowed (to, cc, bcc)")
    email_from: Annotated[str, AfterValidator(_address)] | None = Field(None, description="the From of every email")
    allow_app_from: bool = Field(False, description="let the app choose its From")
    http_credentials: list[Name] = Field([], description="http.request credentials allowed")
    http_scope: dict[Name, ScopeConfig] = Field({}, description="narrower scopes, by credential")
    notify_targets: list[Name] = Field([], description="notify targets allowed")
    sms_prefixes: list[Annotated[str, AfterValidator(_prefix)]] | None = Field(
        None, description="SMS numbers must start with one of these (none: any)"
    )
    rate: dict[Kind, RateConfig] = Field({}, description="a rate limit per kind")
    daily_quota: dict[Kind, Annotated[int, Field(ge=0)]] = Field({}, description="intents per UTC day, per kind")


class DeviceConfig(Section):
    """`[tenants.T.devices.NAME]`: one device's overrides, by the name it was enrolled with."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="keys that replace the tenant's")


class TenantLimitsConfig(Section):
    """`[tenants.T.limits]`: the tenant's own rate and quota (all its devices together) and its share of the
    vendor's integrations (its own are its alone)."""

    rate: dict[Kind, RateConfig] = Field({}, description="a rate limit per kind, for all the tenant's devices together")
    daily_quota: dict[Kind, Annotated[int, Field(ge=0)]] = Field(
        {}, description="intents per UTC day, per kind, for all the tenant's devices together"
    )
    weight: Positive = Field(1.0, description="share of each shared integration's slots, relative to other tenants")
    max_share: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="at most this fraction of each shared integration's slots (at least one slot)"
    )


class TenantConfig(Section):
    """`[tenants.T]`."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="the tenant's policy")
    devices: dict[Name, DeviceConfig] = Field({}, description="per-device overrides")
    integrations: IntegrationsConfig = Field(
        default_factory=IntegrationsConfig, description="the tenant's own providers, replacing the vendor's by kind"
    )
    limits: TenantLimitsConfig = Field(
        default_factory=TenantLimitsConfig, description="the tenant's own rate, quota and share of executor slots"
    )

    def policy_table(self) -> dict[str, Any]:
        """The policy keys as written (the tenant's, its devices' and its own limits), as
        `PolicyEngine.from_config` reads them."""
        limits = {k: v for k, v in self.limits.table().items() if k in ("rate", "daily_quota")}
        devices = {name: d.table() for name, d in self.devices.items()}
        return {"policy": self.policy.table(), "devices": devices, "limits": limits}

    def own_scopes(self) -> dict[str, UrlScope]:
        """The scopes of the tenant's own http.request credentials (none without its own `[integrations.http]`)."""
        http = self.integrations.http
        return {} if http is None else http.scopes()
