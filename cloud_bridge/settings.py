"""The bridge's one settings object: the command line's flags and the config file, typed and checked.

The CLI reads the environment and hands it to `build_settings`, which reads the config file
(`cloud_bridge.config`): secrets are read into `Secret` values there, and the environment is not kept.
Adding a setting: a flag goes here (a field, and a parameter of `build_settings`); a config key goes
in its section's model under `cloud_bridge/config/` (a field with a default and a description), and
in docs/config.md (tests/unit/test_config_reference.py holds the two equal).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cloud_bridge.config import BridgeConfig, load_config, read_config_file
from cloud_bridge.config.bridge import MIN_INTENT_AGE
from cloud_bridge.enroll_limits import EnrollLimits
from cloud_bridge.errors import ConfigError
from cloud_bridge.store.url import StoreUrl
from intent_contract.accept_limits import ConnectionLimits
from intent_contract.names import is_name

__all__ = ["FLAGS", "MIN_INTENT_AGE", "BridgeSettings", "HostPort", "build_settings", "default_node_id"]


def default_node_id() -> str:
    """A name for this process, unique among nodes: host, pid and a random suffix."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:40].strip("-.") or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


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
    metrics_listen: HostPort | None = None  # /metrics and /healthz over plain HTTP; off by default
    tls_cert: Path | None = None
    tls_key: Path | None = None
    config_path: Path | None = None
    config: BridgeConfig = field(default_factory=BridgeConfig)
    revocation_poll: float = 0.5
    store: StoreUrl | None = None  # None: SQLite in data_dir
    node_id: str = field(default_factory=default_node_id)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if not is_name(self.node_id):
            raise ConfigError("--node-id must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

    @property
    def store_url(self) -> StoreUrl:
        """The store in use: the configured one, or SQLite files in the data directory."""
        return self.store if self.store is not None else StoreUrl.sqlite(self.data_dir)

    @property
    def configured(self) -> bool:
        """False when the bridge runs on safe defaults: no integration, no tenant policy."""
        return self.config.configured

    # The [bridge] keys, read where they are used.
    @property
    def audience(self) -> str:
        return self.config.bridge.audience

    @property
    def max_attempts(self) -> int:
        return self.config.bridge.max_attempts

    @property
    def retry_base(self) -> float:
        return self.config.bridge.retry_base

    @property
    def retry_cap(self) -> float:
        return self.config.bridge.retry_cap

    @property
    def max_rate_limited(self) -> int:
        return self.config.bridge.max_rate_limited

    @property
    def enroll_limits(self) -> EnrollLimits:
        return self.config.bridge.enroll_limits

    @property
    def connection_limits(self) -> ConnectionLimits:
        return self.config.bridge.connection_limits

    @property
    def max_intent_age(self) -> float:
        return self.config.bridge.max_intent_age

    @property
    def public_mqtt_port(self) -> int:
        """The MQTT/TLS port devices are told at enrollment: a balancer's, by default the node's own."""
        configured = self.config.bridge.public_mqtt_port
        return configured if configured is not None else self.listen.port

    def listening(self) -> str:
        """Every listener, for the start's log line (the WebSocket one was left out: `--ws-listen` looked unused)."""
        told = self.public_mqtt_port
        parts = [f"mqtt {self.listen}" + (f" (devices told port {told})" if told != self.listen.port else "")]
        if self.ws_listen is not None:
            parts.append(f"websocket {self.ws_listen}")
        parts.append(f"https {self.http_listen}")
        parts.append(f"metrics {self.metrics_listen or 'off'}")
        return ", ".join(parts)

    @property
    def lease(self) -> float:
        return self.config.bridge.lease

    @property
    def tokens_per_device(self) -> int:
        return self.config.bridge.tokens_per_device

    @property
    def store_timeout(self) -> float:
        return self.config.bridge.store_timeout


# The `cloud-bridge run` flag that sets each field (docs/config.md); `config` is the file's content, None:
# fixed in code. tests/unit/test_config_reference.py fails for a field missing here or a flag missing there.
FLAGS: Final[Mapping[str, str | None]] = {
    "data_dir": "--data-dir",
    "listen": "--listen",
    "http_listen": "--http-listen",
    "ws_listen": "--ws-listen",
    "metrics_listen": "--metrics-listen",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "config_path": "--config",
    "config": "--config",
    "revocation_poll": None,
    "store": "--store",
    "node_id": "--node-id",
}


def build_settings(
    *,
    data_dir: Path,
    env: Mapping[str, str],
    config_path: Path | None = None,
    listen: str | None = None,
    http_listen: str | None = None,
    ws_listen: str | None = None,
    metrics_listen: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    revocation_poll: float = 0.5,
    store: str | None = None,
    node_id: str | None = None,
    node_secrets: bool = True,
) -> BridgeSettings:
    """The flags, and the config file (if any) read with its secrets from `env` or their files (without
    `node_secrets`, the store's password only: `load_config`)."""
    document = read_config_file(config_path) if config_path is not None else {}
    source = str(config_path) if config_path is not None else "config"
    config = load_config(document, env, source, node_secrets=node_secrets)
    defaults = BridgeSettings(data_dir=data_dir)
    return BridgeSettings(
        data_dir=data_dir,
        listen=HostPort.parse(listen) if listen else defaults.listen,
        http_listen=HostPort.parse(http_listen) if http_listen else defaults.http_listen,
        ws_listen=HostPort.parse(ws_listen) if ws_listen else None,
        metrics_listen=HostPort.parse(metrics_listen) if metrics_listen else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        config_path=config_path,
        config=config,
        revocation_poll=revocation_poll,
        store=config.bridge.store_url(store),
        node_id=node_id or defaults.node_id,
    )
