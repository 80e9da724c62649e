"""Per-tenant policy with per-device overrides: a pure decision for each intent.

The decision says whether the content is allowed and which limits (rate, daily quota) apply; spending
those limits needs state shared by every bridge node, so the ledger does it inside the admission
transaction (`ratelimit.take`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar

from cloud_bridge.errors import ConfigError, NotAMailboxError, PermanentError
from cloud_bridge.integrations.url_scope import UrlScope
from cloud_bridge.limit_rules import quotas, rates, tenant_limits
from cloud_bridge.mailbox import is_mailbox, parse_mailbox
from cloud_bridge.ratelimit import NO_LIMITS, Limits, RateRule
from intent_contract.names import KINDS, is_name

log = logging.getLogger(__name__)
T = TypeVar("T")

CODES: Final = frozenset(
    {
        "policy_kind",
        "policy_recipient",
        "policy_from",
        "policy_credential",
        "policy_url",
        "policy_method",
        "policy_target",
        "rate_limited",
        "quota_exceeded",
        "policy_tenant",
    }
)
_KEYS: Final = frozenset(
    {
        "kinds",
        "email_domains",
        "email_from",
        "allow_app_from",
        "http_credentials",
        "http_scope",
        "notify_targets",
        "sms_prefixes",
        "rate",
        "daily_quota",
    }
)


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """The device an intent came from, as the registry knows it."""

    device_id: str
    tenant: str
    name: str

    def __post_init__(self) -> None:
        for value in (self.device_id, self.tenant, self.name):
            if not isinstance(value, str) or not value:
                raise ValueError("device_id, tenant and name must be non-empty strings")


@dataclass(frozen=True, slots=True)
class Decision:
    """Allowed, with what policy decided (`overrides`) and the limits to spend, or refused with a stable `code`."""

    allowed: bool
    code: str = ""
    detail: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = NO_LIMITS  # the device's, for this kind
    tenant_limits: Limits = NO_LIMITS  # the whole tenant's (all its devices together), for this kind

    def __post_init__(self) -> None:
        if self.allowed and self.code:
            raise ValueError("an allowed decision has no code")
        if not self.allowed and self.code not in CODES:
            raise ValueError(f"unknown policy code {self.code!r}")


# Allowed with nothing decided: one value shared by every such answer (its overrides are read only).
ALLOWED = Decision(True, overrides=MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Rules:
    """The effective policy of one device (tenant keys, with the device's keys replacing them)."""

    kinds: frozenset[str] = frozenset()
    email_domains: frozenset[str] = frozenset()
    email_from: str | None = None
    allow_app_from: bool = False
    http_credentials: frozenset[str] = frozenset()
    notify_targets: frozenset[str] = frozenset()
    sms_prefixes: tuple[str, ...] | None = None
    rate: Mapping[str, RateRule] = field(default_factory=dict)
    daily_quota: Mapping[str, int] = field(default_factory=dict)
    # Where each http.request credential may go for this device (the credential's scope, narrowed by
    # `http_scope`); None when the bridge has no [integrations.http] (nothing to check at admission).
    http_scopes: Mapping[str, UrlScope] | None = None

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, Any],
        where: str,
        credentials: Mapping[str, UrlScope] | None = None,
        targets: Collection[str] | None = None,
    ) -> Rules:
        """Validate a merged policy table; raises ConfigError naming `where`.

        `credentials` are the scopes `http_scope` may narrow: the credentials' own for a tenant,
        the tenant's effective ones for a device (so a device can only narrow its tenant's further).
        `http_credentials` and `notify_targets` may name only those credentials and `targets` (the notify
        targets of the integration serving the tenant); None: no such integration, nothing to check.
        """
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown policy keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        kinds = _names(table.get("kinds", []), f"{where}.kinds", kinds=True)
        email_from = table.get("email_from")
        if email_from is not None and not is_mailbox(email_from):
            raise ConfigError(f"{where}.email_from must be a plain email address (local@domain, ASCII)")
        allow_app_from = table.get("allow_app_from", False)
        if not isinstance(allow_app_from, bool):
            raise ConfigError(f"{where}.allow_app_from must be true or false")
        prefixes = table.get("sms_prefixes")
        if prefixes is not None:
            if not isinstance(prefixes, list) or not all(
                isinstance(p, str) and p.startswith("+") and p[1:].isdigit() for p in prefixes
            ):
                raise ConfigError(f"{where}.sms_prefixes must be a list of '+<digits>' prefixes")
            prefixes = tuple(prefixes)
        # What the policy names that the integrations must have: every such problem of the table at once.
        problems: list[str] = []
        none: frozenset[str] = frozenset()
        credentials_named = _collected(problems, none, _known, table, "http_credentials", where, credentials)
        targets_named = _collected(problems, none, _known, table, "notify_targets", where, targets)
        scope_table = table.get("http_scope", {})
        scopes = _collected(problems, None, _http_scopes, scope_table, f"{where}.http_scope", credentials)
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(
            kinds=kinds,
            email_domains=frozenset(
                d.lower() for d in _strings(table.get("email_domains", []), f"{where}.email_domains")
            ),
            email_from=email_from,
            allow_app_from=allow_app_from,
            http_credentials=credentials_named,
            notify_targets=targets_named,
            sms_prefixes=prefixes,
            rate=rates(table.get("rate", {}), f"{where}.rate"),
            daily_quota=quotas(table.get("daily_quota", {}), f"{where}.daily_quota"),
            http_scopes=scopes,
        )


def _collected(problems: list[str], default: T, check: Callable[..., T], *args: Any) -> T:
    """`check(*args)`, or `default` with its ConfigError's detail added to `problems`."""
    try:
        return check(*args)
    except ConfigError as exc:
        problems.append(exc.detail)
        return default


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return value


def _names(value: object, where: str, *, kinds: bool = False) -> frozenset[str]:
    items = _strings(value, where)
    for n, item in enumerate(items):  # the entry's position, not its text: config problems quote no value
        if kinds and item not in KINDS:
            raise ConfigError(f"{where}.{n}: unknown kind (known: {', '.join(KINDS)})")
        if not kinds and not is_name(item):
            raise ConfigError(f"{where}.{n}: not a valid name")
    return frozenset(items)


def _known(table: Mapping[str, Any], key: str, where: str, configured: Collection[str] | None) -> frozenset[str]:
    """The names under `key`, each among `configured` (None: nothing configured to check against)."""
    names = _names(table.get(key, []), f"{where}.{key}")
    unknown = set() if configured is None else names - set(configured)
    if unknown:
        what = key.split("_")[1]
        raise ConfigError(f"{where}.{key}: unknown {what} {sorted(unknown)}; configured: {sorted(configured or ())}")
    return names


def _http_scopes(value: object, where: str, credentials: Mapping[str, UrlScope] | None) -> dict[str, UrlScope] | None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table keyed by credential name")
    if credentials is None:
        if value:
            raise ConfigError(f"{where}: there is no [integrations.http] credential to narrow")
        return None
    unknown = set(value) - set(credentials)
    if unknown:
        raise ConfigError(f"{where}: unknown credentials {sorted(unknown)}; configured: {sorted(credentials)}")
    return {
        name: scope.narrowed(value[name], f"{where}.{name}") if name in value else scope
        for name, scope in credentials.items()
    }


def _addresses(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class PolicyEngine:
    """Decides whether a device may run an intent, and which limits apply; holds no state but the rules."""

    def __init__(
        self,
        tenants: Mapping[str, Rules],
        devices: Mapping[tuple[str, str], Rules],
        tenant_limits: Mapping[str, Mapping[str, Limits]] | None = None,
    ) -> None:
        self._tenants = dict(tenants)
        self._devices = dict(devices)
        self._tenant_limits = {t: dict(by_kind) for t, by_kind in (tenant_limits or {}).items()}

    @classmethod
    def from_config(
        cls,
        tenants: Mapping[str, Any],
        credentials: Mapping[str, UrlScope] | None = None,
        tenant_credentials: Mapping[str, Mapping[str, UrlScope]] | None = None,
        targets: Collection[str] | None = None,
        tenant_targets: Mapping[str, Collection[str]] | None = None,
    ) -> PolicyEngine:
        """Build from the `[tenants]` table of the config file; raises ConfigError.

        `credentials`: the scope of every http.request credential (`url_scope.credential_scopes`),
        so that URL and method are decided at admission; None leaves them to the integration.
        `tenant_credentials`: those of a tenant that brings its own http.request integration, used for
        that tenant instead. `targets`, `tenant_targets`: the notify targets, likewise (None: unchecked).
        """
        if not isinstance(tenants, Mapping):
            raise ConfigError("[tenants] must be a table")
        by_tenant: dict[str, Rules] = {}
        by_device: dict[tuple[str, str], Rules] = {}
        whole: dict[str, dict[str, Limits]] = {}
        problems: list[str] = []  # every tenant's and device's, reported at once
        for tenant, body in tenants.items():
            where = f"tenants.{tenant}"
            if not is_name(tenant) or not isinstance(body, Mapping):
                raise ConfigError(f"{where}: tenant names must be valid names with a table")
            base = body.get("policy", {})
            if not isinstance(base, Mapping):
                raise ConfigError(f"{where}.policy must be a table")
            own = (tenant_credentials or {}).get(tenant, credentials)
            notify = (tenant_targets or {}).get(tenant, targets)
            tenant_rules = _collected(problems, None, Rules.from_table, base, f"{where}.policy", own, notify)
            devices = body.get("devices", {})
            if not isinstance(devices, Mapping):
                raise ConfigError(f"{where}.devices must be a table")
            for name, device in devices.items():
                dwhere = f"{where}.devices.{name}.policy"
                override = device.get("policy", {}) if isinstance(device, Mapping) else None
                if not is_name(name) or not isinstance(override, Mapping):
                    raise ConfigError(f"{dwhere}: device names must be valid names with a policy table")
                if tenant_rules is not None:  # else the tenant's problem, which its devices share, is reported
                    merged, scopes = {**base, **override}, tenant_rules.http_scopes
                    found = _collected(problems, None, Rules.from_table, merged, dwhere, scopes, notify)
                    if found is not None:
                        by_device[(tenant, name)] = found
            if tenant_rules is not None:
                by_tenant[tenant] = tenant_rules
            whole[tenant] = tenant_limits(body.get("limits", {}), f"{where}.limits")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(by_tenant, by_device, whole)

    def rules_for(self, device: DeviceRef) -> Rules | None:
        """The effective rules of a device, or None when its tenant has no policy."""
        found = self._devices.get((device.tenant, device.name))
        return found if found is not None else self._tenants.get(device.tenant)

    def check(self, device: DeviceRef, kind: str, payload: Mapping[str, Any]) -> Decision:
        """Allow or refuse one intent by its content; an allowed one carries the limits to spend."""
        rules = self.rules_for(device)
        if rules is None:
            return Decision(False, "policy_tenant", f"tenant {device.tenant!r} has no policy")
        if kind not in rules.kinds:
            return Decision(False, "policy_kind", f"kind {kind!r} is not allowed for this device")
        content = _check_content(rules, kind, payload)
        limits = Limits(rules.rate.get(kind), rules.daily_quota.get(kind))
        whole = self._tenant_limits.get(device.tenant, {}).get(kind, NO_LIMITS)
        if not content.allowed or not (limits.any or whole.any):
            return content
        return Decision(True, overrides=content.overrides, limits=limits, tenant_limits=whole)


def _check_content(rules: Rules, kind: str, payload: Mapping[str, Any]) -> Decision:
    if kind == "email.send":
        return _check_email(rules, payload)
    if kind == "http.request":
        return _check_http(rules, payload)
    if kind == "notify":
        target = payload.get("target")
        if target not in rules.notify_targets:
            return Decision(False, "policy_target", f"notify target {target!r} is not allowed")
    elif kind == "sms.send" and rules.sms_prefixes is not None:
        to = payload.get("to")
        if not isinstance(to, str) or not to.startswith(rules.sms_prefixes):
            return Decision(False, "policy_recipient", "SMS number is outside the allowed prefixes")
    return ALLOWED


def _check_http(rules: Rules, payload: Mapping[str, Any]) -> Decision:
    credential = payload.get("credential")
    if credential not in rules.http_credentials:
        return Decision(False, "policy_credential", f"credential {credential!r} is not allowed")
    if rules.http_scopes is None:
        return ALLOWED
    scope = rules.http_scopes.get(str(credential))
    if scope is None:
        return Decision(False, "policy_credential", f"credential {credential!r} is not configured at the bridge")
    try:
        scope.request(payload, str(credential))
    except PermanentError as exc:  # policy_method or policy_url: the integration's own check, narrowed
        return Decision(False, exc.code, exc.detail)
    return ALLOWED


def _check_email(rules: Rules, payload: Mapping[str, Any]) -> Decision:
    recipients: Iterable[object] = [a for f in ("to", "cc", "bcc") for a in _addresses(payload.get(f))]
    seen = 0
    for address in recipients:
        seen += 1
        # The parsed address, which is what the SMTP integration sends: "root)@ok.com" would go out
        # as RCPT TO:<root>, so it is refused here rather than read as an ok.com recipient.
        try:
            domain = parse_mailbox(address).domain.lower()
        except NotAMailboxError as exc:
            return Decision(False, "policy_recipient", f"recipient is not a plain email address: {exc.detail}")
        if domain not in rules.email_domains:
            return Decision(False, "policy_recipient", f"recipient domain {domain!r} is not allowed")
    if seen == 0:
        return Decision(False, "policy_recipient", "no recipients")
    # Replies go where reply_to says: the recipients' domains or the configured From's, nowhere else.
    own = rules.email_from.rpartition("@")[2].lower() if rules.email_from else None
    for address in _addresses(payload.get("reply_to")):
        try:
            domain = parse_mailbox(address).domain.lower()
        except NotAMailboxError as exc:
            return Decision(False, "policy_recipient", f"reply_to is not a plain email address: {exc.detail}")
        if domain not in rules.email_domains and domain != own:
            return Decision(False, "policy_recipient", f"reply_to domain {domain!r} is not allowed")
    app_from = payload.get("from")
    if app_from is not None:
        if not is_mailbox(app_from):
            return Decision(False, "policy_from", "from is not a plain email address")
        assert isinstance(app_from, str)
        if rules.allow_app_from:
            return Decision(True, overrides={"from": app_from})
        if rules.email_from is None or app_from.lower() != rules.email_from.lower():
            return Decision(False, "policy_from", "this device may not choose its from-address")
    if rules.email_from is None:
        return Decision(False, "policy_from", "no from-address is configured for this device")
    return Decision(True, overrides={"from": rules.email_from})
