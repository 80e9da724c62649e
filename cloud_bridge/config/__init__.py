"""The bridge's config file, parsed and checked as a whole when it is read.

`load_config(document, env)` turns the TOML document into a `BridgeConfig`: every key typed, unknown
keys refused, secrets read from the environment or their files into `Secret` values, and the policy
checked against the integrations. Every problem is reported at once, each with where it is
(`integrations.http.credentials.crm.methods.1: ...`), in one `ConfigError`; values are never quoted
(a misplaced secret must not reach a log). The environment is only read here, not kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError

from cloud_bridge.config.bridge import BridgeSection
from cloud_bridge.config.dashboard import DashboardConfig
from cloud_bridge.config.fields import Name, Section
from cloud_bridge.config.integrations import IntegrationsConfig
from cloud_bridge.config.tenants import TenantConfig
from cloud_bridge.errors import ConfigError
from cloud_bridge.fair_share import Share, Shares
from cloud_bridge.policy import PolicyEngine
from intent_contract.errors import DecodeError
from intent_contract.toml_file import read_toml

__all__ = ["BridgeConfig", "load_config", "parse_section", "read_config_file"]

S = TypeVar("S", bound=Section)


class BridgeConfig(Section):
    """The whole file: `[bridge]`, `[integrations.*]`, `[tenants.*]` and `[dashboard]`."""

    bridge: BridgeSection = Field(default_factory=BridgeSection, description="the process's own settings")
    integrations: IntegrationsConfig = Field(
        default_factory=IntegrationsConfig, description="the providers, with their keys"
    )
    tenants: dict[Name, TenantConfig] = Field({}, description="policy, own providers and share per tenant")
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="the operators' dashboard")

    def problems(self, env: Mapping[str, str]) -> list[str]:
        try:
            self.policy()  # an http_scope may only narrow a configured credential
        except ConfigError as exc:
            return [exc.detail]
        return []

    def policy(self) -> PolicyEngine:
        """The policy engine of `[tenants]`, with the http.request credentials' scopes and the notify targets
        (each tenant's own integration's when it brings one) that policy may name."""
        http = self.integrations.http
        scopes = http.scopes() if http is not None else None
        own = {name: t.own_scopes() for name, t in self.tenants.items() if t.integrations.http is not None}
        tables = {name: t.policy_table() for name, t in self.tenants.items()}
        notify = self.integrations.notify
        targets = None if notify is None else set(notify.targets)
        own_targets = {name: set(t.integrations.notify.targets) for name, t in self.tenants.items()
                       if t.integrations.notify is not None}  # fmt: skip
        return PolicyEngine.from_config(tables, scopes, own, targets, own_targets)

    def shares(self) -> Shares:
        """Each tenant's share of the vendor's integrations (`[tenants.T.limits]`)."""
        return Shares({name: Share(t.limits.weight, t.limits.max_share) for name, t in self.tenants.items()})

    @property
    def configured(self) -> bool:
        """False when the bridge runs on safe defaults: no integration, no tenant policy."""
        return bool(self.tenants) or self.integrations.any


def _where(loc: tuple[int | str, ...]) -> str:
    # A key with a dot in it (`rate."email.send"`) is quoted as TOML would have it.
    return ".".join(f'"{part}"' if "." in str(part) else str(part) for part in loc)


def describe(error: ValidationError, *, where: str = "", whole_file: bool = False) -> list[str]:
    """One line per problem: where it is (under `where`) and what is wrong, never the value."""
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        at = ".".join(part for part in (where, _where(problem["loc"])) if part)
        if problem["type"] == "extra_forbidden":
            message = f"unknown {'section' if whole_file and len(problem['loc']) == 1 else 'key'}"
        else:
            message = problem["msg"]
        lines.append(f"{at}: {message}" if at else message)
    return lines


def parse_section(model: type[S], table: object, env: Mapping[str, str], where: str = "") -> S:
    """One table validated as `model`, its secrets read from `env` or files; ConfigError with every problem."""
    try:
        return model.model_validate(table, context={"env": env})
    except ValidationError as exc:
        problems = describe(exc, where=where)
    # Raised outside the handler: pydantic's error keeps the input (a misplaced secret) and must not
    # ride along as the context of ours.
    raise ConfigError("; ".join(problems))


def load_config(
    document: Mapping[str, Any], env: Mapping[str, str], source: str = "config", *, node_secrets: bool = True
) -> BridgeConfig:
    """The whole config from a parsed TOML document; ConfigError naming `source` and every problem.

    Without `node_secrets` (the operators' commands) only `[bridge]`'s store password is read: the providers'
    keys and the dashboard's session key are a node's, which an operator's machine need not hold.
    """
    try:
        return BridgeConfig.model_validate(document, context={"env": env, "node_secrets": node_secrets})
    except ValidationError as exc:
        problems = describe(exc, whole_file=True)
    raise ConfigError(f"{source}: " + "; ".join(problems))


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError with the file name when it cannot be read or parsed."""
    try:
        return read_toml(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except DecodeError as exc:
        raise ConfigError(f"config file {path} {exc}") from None
