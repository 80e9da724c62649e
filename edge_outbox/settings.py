"""The outbox's settings: one frozen object, built by the CLI from flags and environment, passed down."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from edge_outbox.errors import ConfigError
from edge_outbox.windows import Window
from intent_contract.wire import BATCH_ITEMS, BATCH_PAYLOAD_BYTES

DEFAULT_DATA_DIR = Path("outbox-data")
DEFAULT_LISTEN = "127.0.0.1:1883"


def parse_host_port(text: str, flag: str, default_port: int = 1883) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or ':PORT' for loopback) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: port must be a number (HOST:PORT)") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{flag} {text!r}: port must be within 1..65535")
    return host, port


_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/*")


def shown_url(url: str) -> str:
    """`url` as an error may quote it: a password in it (after the user name's ':', up to the last '@') as ***.

    Read without a URL parser: the URL is quoted because it did not parse as one ("tcp://site:pw@broker", the
    scheme Paho's clients take, quoted the password in the refusal)."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme = _SCHEME.match(head)
    start = scheme.end() if scheme else 0
    user, colon, _ = head[start:].partition(":")
    return f"{head[:start]}{user}:***@{tail}" if colon else url


@dataclass(frozen=True, slots=True)
class AttachTarget:
    """An existing broker to attach to, from `--attach mqtt[s]://[user@]host[:port]`.

    With mqtts:// the connection is TLS, the broker's certificate verified against `ca_file` (or the
    system's trust store) and its name against `host`; there is no way to turn verification off."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = "edge-outbox"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None  # a client certificate, for a broker that asks for one
    key_file: Path | None = None  # its key, when not in cert_file

    @property
    def url(self) -> str:
        """Where it attaches, for logs (no user name or password)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(
        cls,
        url: str,
        password: str | None,
        client_id: str,
        ca_file: Path | None = None,
        client_cert: tuple[Path | None, Path | None] = (None, None),
    ) -> AttachTarget:
        """`client_cert`: the client certificate's file and its key's (None: in the certificate's file)."""
        shown = shown_url(url)
        # A password in a URL refused for another reason is said to be in the wrong place too.
        also = "; and put the password in EDGE_OUTBOX_ATTACH_PASSWORD, not in the URL" if shown != url else ""
        try:
            parts = urlsplit(url)
        except ValueError:  # its words quote the URL's host part, a password in it included
            raise ConfigError(
                f"--attach {shown!r}: not a URL (a bracket, or a character a host name may not have){also}"
            ) from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"--attach {shown!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT (TLS){also}")
        if parts.password:
            raise ConfigError("--attach: put the password in EDGE_OUTBOX_ATTACH_PASSWORD, not in the URL")
        if password and not parts.username:
            # MQTT 3.1.1 forbids a password without a user name [MQTT-3.1.2-22] (Mosquitto closes the connection:
            # it was retried for ever as a broker that is away) and Mosquitto's password_file needs one anyway.
            raise ConfigError(
                f"--attach {shown!r}: EDGE_OUTBOX_ATTACH_PASSWORD is set and the URL names no user: "
                "use mqtt[s]://USER@HOST:PORT"
            )
        if not parts.username:
            password = None  # an empty EDGE_OUTBOX_ATTACH_PASSWORD= line (systemd's EnvironmentFile) is none
        tls = parts.scheme == "mqtts"
        if ca_file is not None and not tls:
            raise ConfigError(f"--attach-ca is for a TLS broker: use mqtts:// in --attach, not {shown!r}")
        cert_file, key_file = client_cert
        if (cert_file is not None or key_file is not None) and not tls:
            raise ConfigError(f"--attach-cert is for a TLS broker: use mqtts:// in --attach, not {shown!r}")
        if key_file is not None and cert_file is None:
            raise ConfigError("--attach-key is the key of --attach-cert: give the certificate too")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"--attach {shown!r}: bad port") from None
        return cls(parts.hostname, port, parts.username, password, client_id, tls, ca_file, cert_file, key_file)


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    """How the forwarder talks to the bridge."""

    batch_items: int = BATCH_ITEMS
    batch_bytes: int = BATCH_PAYLOAD_BYTES
    window: int = 4000
    ack_timeout_s: float = 30.0
    token_lifetime_s: int = 900
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    transport: Literal["tcp", "websockets"] = "tcp"
    websocket_port: int = 443
    idle_poll_s: float = 1.0
    windows: tuple[Window, ...] = ()  # --forward-window: connect only inside these (none: always)
    health_interval_s: float = 60.0  # --health-interval: a health report to the bridge this often (0: on connect only)


# The config key (an `edge-outbox run` option, docs/config.md) that sets each field; None: fixed in code.
# tests/unit/test_config_reference.py fails for a field missing here or a key missing from the docs.
FORWARDER_KEYS: Final[Mapping[str, str | None]] = {
    "batch_items": None,
    "batch_bytes": None,
    "window": None,
    "ack_timeout_s": None,
    "token_lifetime_s": None,
    "backoff_base_s": None,
    "backoff_cap_s": None,
    "transport": "bridge_websocket",
    "websocket_port": "bridge_websocket",
    "idle_poll_s": None,
    "windows": "forward_window",
    "health_interval_s": "health_interval",
}


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    listen_host: str = "127.0.0.1"
    listen_port: int = 1883
    attach: AttachTarget | None = None
    # app -> scrypt hash; None: no --users, apps do not log in (an empty dict: a users file naming no app, none may)
    users: dict[str, str] | None = field(default=None, repr=False)
    users_file: Path | None = None  # where `users` was read, again at each reload (SIGHUP)
    max_queue_items: int = 1_000_000
    max_queue_bytes: int = 1 << 30
    retention_s: float = 7 * 86400.0
    session_expiry_s: float = 7 * 86400.0  # a persistent app session unseen this long is dropped
    status_history_s: float = 86400.0  # statuses are kept this long from their time (and until consumed)
    housekeeping_s: float = 1.0
    forward: bool = True  # forward to the bridge when enrolled
    metrics: tuple[str, int] | None = None  # (host, port) of the loopback /metrics and /healthz endpoint
    max_offline_s: float = 3600.0  # longer without a link to the bridge is unhealthy
    forwarder: ForwarderSettings = field(default_factory=ForwarderSettings)

    def __post_init__(self) -> None:
        if self.attach is not None and self.users is not None:  # (it was ignored: any broker client was any app)
            raise ConfigError(
                "--users is for the outbox's own endpoint: with --attach, apps log in to the site's broker; give each"
                " app a login there and an ACL to outbox/{app}/# (write) and outbox/{app}/status/# (read), and drop"
                " --users"
            )
        for flag, limit in (("--max-queue-items", self.max_queue_items), ("--max-queue-bytes", self.max_queue_bytes)):
            if limit < 0:  # (it said "queue limits", not which one)
                raise ConfigError(f"{flag} cannot be negative (0 means no limit)")
        for name, value in (
            ("--retention", self.retention_s),
            ("--session-expiry", self.session_expiry_s),
            ("--status-history", self.status_history_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be positive")


OUTBOX_KEYS: Final[Mapping[str, str | None]] = {
    "data_dir": "data_dir",
    "listen_host": "listen",
    "listen_port": "listen",
    "attach": "attach",
    "users": "users",
    "users_file": "users",
    "max_queue_items": "max_queue_items",
    "max_queue_bytes": "max_queue_bytes",
    "retention_s": "retention",
    "session_expiry_s": "session_expiry",
    "status_history_s": "status_history",
    "housekeeping_s": None,
    "forward": "no_forward",
    "metrics": "metrics",
    "max_offline_s": "max_offline",
    "forwarder": None,  # a table of its own: FORWARDER_KEYS
}
