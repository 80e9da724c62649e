"""The `rate` and `daily_quota` tables of a policy (per device) or of a tenant's limits (all its devices
together), read into `ratelimit` values; ConfigError naming where a problem is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from cloud_bridge.errors import ConfigError
from cloud_bridge.ratelimit import Limits, RateRule
from intent_contract.names import KINDS

_PERIODS: Final = {"per_second": 1.0, "per_minute": 60.0, "per_hour": 3600.0}


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")
    for kind in value:
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind (known: {', '.join(KINDS)})")
    return value


def rates(value: object, where: str) -> dict[str, RateRule]:
    """A `rate` table (by kind: one of the periods and an optional burst) as token bucket rules."""
    rules: dict[str, RateRule] = {}
    for kind, spec in _table(value, where).items():
        if not isinstance(spec, Mapping) or set(spec) - {*_PERIODS, "burst"}:
            raise ConfigError(f"{where}.{kind} must be a table of one of {sorted(_PERIODS)} and optional burst")
        periods = [p for p in _PERIODS if p in spec]
        if len(periods) != 1:
            raise ConfigError(f"{where}.{kind} needs exactly one of {sorted(_PERIODS)}")
        count = spec[periods[0]]
        burst = spec.get("burst", max(1, math.ceil(count)) if isinstance(count, int | float) else 0)
        if isinstance(count, bool) or not isinstance(count, int | float) or count <= 0:
            raise ConfigError(f"{where}.{kind}.{periods[0]} must be a positive number")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"{where}.{kind}.burst must be a positive integer")
        rules[kind] = RateRule(rate=float(count) / _PERIODS[periods[0]], burst=burst)
    return rules


def quotas(value: object, where: str) -> dict[str, int]:
    """A `daily_quota` table (by kind: intents per UTC day)."""
    quotas: dict[str, int] = {}
    for kind, limit in _table(value, where).items():
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"{where}.{kind} must be a non-negative integer")
        quotas[kind] = limit
    return quotas


def tenant_limits(value: object, where: str) -> dict[str, Limits]:
    """A tenant's own rate and daily quota per kind (`[tenants.T.limits]`), for all its devices together."""
    if not isinstance(value, Mapping) or set(value) - {"rate", "daily_quota"}:
        raise ConfigError(f"{where} must be a table of rate and daily_quota")
    by_rate = rates(value.get("rate", {}), f"{where}.rate")
    by_quota = quotas(value.get("daily_quota", {}), f"{where}.daily_quota")
    return {kind: Limits(by_rate.get(kind), by_quota.get(kind)) for kind in {*by_rate, *by_quota}}
