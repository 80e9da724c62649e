"""The bridge's one settings object, built by the CLI from the TOML file, CLI flags and the environment.

Nothing else in the bridge reads the environment: the CLI hands a snapshot of it in here, and the
integration builders resolve `*_env` secrets from that snapshot. The snapshot is kept out of repr.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_bridge.errors import ConfigError
from intent_contract.device_token import DEFAULT_AUDIENCE

_TOP_LEVEL = {"bridge", "integrations", "tenants"}
_BRIDGE_KEYS = {"audience", "max_attempts", "retry_base", "retry_cap"}


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} out of range")

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """'HOST:PORT', '[v6]:PORT' or ':PORT' (all interfaces)."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]") or "0.0.0.0", int(port))  # noqa: S104 - listening on all interfaces is the default

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Everything the running bridge needs; frozen, validated, secret-free in repr."""

    data_dir: Path
    listen: HostPort = HostPort("0.0.0.0", 8883)  # noqa: S104
    http_listen: HostPort = HostPort("0.0.0.0", 8443)  # noqa: S104
    ws_listen: HostPort | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    config_path: Path | None = None
    audience: str = DEFAULT_AUDIENCE
    max_attempts: int = 8
    retry_base: float = 1.0
    retry_cap: float = 300.0
    integrations: Mapping[str, Any] = field(default_factory=dict)
    tenants: Mapping[str, Any] = field(default_factory=dict)
    # The environment snapshot the secrets are resolved from: never printed.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    revocation_poll: float = 0.5

    def __post_init__(self) -> None:
        if not self.audience:
            raise ConfigError("bridge.audience must not be empty")
        if self.max_attempts < 1:
            raise ConfigError("bridge.max_attempts must be at least 1")
        if self.retry_base <= 0 or self.retry_cap < self.retry_base:
            raise ConfigError("bridge.retry_base must be > 0 and retry_cap >= retry_base")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")

    @property
    def registry_path(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.db"

    @property
    def configured(self) -> bool:
        """False when the bridge runs on safe defaults: no integration, no tenant policy."""
        return bool(self.integrations or self.tenants)


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed TOML file; ConfigError with the file name on any problem."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = set(document) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {', '.join(sorted(unknown))}")
    return document


def _table(document: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _number(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"bridge.{key} must be a number")
    return float(value)


def build_settings(
    *,
    data_dir: Path,
    env: Mapping[str, str],
    config_path: Path | None = None,
    listen: str | None = None,
    http_listen: str | None = None,
    ws_listen: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    revocation_poll: float = 0.5,
) -> BridgeSettings:
    """Combine the config file (if any), the CLI flags and the environment snapshot."""
    document = read_config_file(config_path) if config_path is not None else {}
    bridge = _table(document, "bridge")
    unknown = set(bridge) - _BRIDGE_KEYS
    if unknown:
        raise ConfigError(f"[bridge]: unknown key(s) {', '.join(sorted(unknown))}")
    audience = bridge.get("audience", DEFAULT_AUDIENCE)
    if not isinstance(audience, str):
        raise ConfigError("bridge.audience must be a string")
    max_attempts = bridge.get("max_attempts", 8)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise ConfigError("bridge.max_attempts must be an integer")
    defaults = BridgeSettings(data_dir=data_dir)
    return BridgeSettings(
        data_dir=data_dir,
        listen=HostPort.parse(listen) if listen else defaults.listen,
        http_listen=HostPort.parse(http_listen) if http_listen else defaults.http_listen,
        ws_listen=HostPort.parse(ws_listen) if ws_listen else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        config_path=config_path,
        audience=audience,
        max_attempts=max_attempts,
        retry_base=_number(bridge, "retry_base", 1.0),
        retry_cap=_number(bridge, "retry_cap", 300.0),
        integrations=_table(document, "integrations"),
        tenants=_table(document, "tenants"),
        env=dict(env),
        revocation_poll=revocation_poll,
    )
