"""`[bridge]`: the bridge process's own settings (everything but integrations and tenants)."""

from __future__ import annotations

import ipaddress

from pydantic import Field

from cloud_bridge.config.fields import Duration, Positive, PositiveInt, SecretSection, Text
from cloud_bridge.enroll_limits import EnrollLimits
from cloud_bridge.errors import ConfigError
from cloud_bridge.ledger import DEFAULT_LEASE
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE
from cloud_bridge.store.pg_deadline import DEFAULT_STORE_TIMEOUT
from cloud_bridge.store.url import StoreUrl
from cloud_bridge.tokens import DEFAULT_TOKENS_PER_DEVICE
from intent_contract.accept_limits import ConnectionLimits
from intent_contract.device_token import DEFAULT_AUDIENCE

MIN_INTENT_AGE = 86_400.0  # a shorter bound would refuse intents of a site offline for one day
_ENROLL = EnrollLimits()
_CONNECTIONS = ConnectionLimits()


class BridgeSection(SecretSection):
    """`[bridge]`."""

    SECRETS = ("store_password",)
    NODE_ONLY = False  # the operators' commands open the store too

    audience: Text = Field(DEFAULT_AUDIENCE, description="the `aud` every device token must carry")
    max_attempts: PositiveInt = Field(
        20, description="executions of one attempt before it ends `failed` (with the defaults: up to about an hour)"
    )
    retry_base: Positive = Field(1.0, description="first backoff between retries, seconds (full jitter)")
    retry_cap: Positive = Field(300.0, description="longest backoff between retries, seconds")
    max_rate_limited: PositiveInt = Field(
        100, description="a provider's rate-limit answers in a row (not counted in max_attempts) before `failed`"
    )
    enroll_per_address_per_minute: Positive = Field(
        _ENROLL.per_address_per_minute, description="POST /v1/enroll requests from one address (an IPv6 /64)"
    )
    enroll_per_minute: Positive = Field(_ENROLL.per_minute, description="POST /v1/enroll requests from everywhere")
    pending_connections_per_address: PositiveInt = Field(
        _CONNECTIONS.per_address, description="connections not yet authenticated from one address, per listener"
    )
    pending_connections: PositiveInt = Field(
        _CONNECTIONS.total, description="connections not yet authenticated from all addresses, per listener"
    )
    proxy_protocol_from: list[Text] = Field(
        [],
        description="addresses or networks of TCP balancers that send a PROXY header (send-proxy-v2): their "
        "connections are counted, logged and checked under the client address it names",
    )
    public_mqtt_port: PositiveInt | None = Field(
        None,
        description="the MQTT/TLS port devices are told at enrollment, where they reach the bridge (a balancer's "
        "port); default: --listen's port",
    )
    store: str | None = Field(
        None, description="`sqlite:///DIR` or `postgresql://USER@HOST:PORT/DB`; default: SQLite in the data dir"
    )
    store_password_env: Text | None = Field(None, description="environment variable holding the PostgreSQL password")
    store_password_file: Text | None = Field(None, description="file holding the PostgreSQL password")
    store_timeout: Duration = Field(
        DEFAULT_STORE_TIMEOUT,
        description="longest use of one PostgreSQL connection (a query, a transaction, a connect) before it is "
        "given up as the store being unreachable",
    )
    max_intent_age: Duration = Field(DEFAULT_MAX_AGE, description="older intents are rejected `too_old`")
    lease: Duration = Field(DEFAULT_LEASE, description="how long a claimed job is held without renewal")
    intent_retention: Duration = Field(
        30 * 86_400.0, description="final ledger rows the edge confirmed are deleted this long after their last change"
    )
    audit_retention: Duration = Field(
        90 * 86_400.0, description="audit rows are deleted this long after they were written"
    )
    tokens_per_device: PositiveInt = Field(
        DEFAULT_TOKENS_PER_DEVICE, description="live device tokens one device may have in the replay cache"
    )

    def required(self, name: str) -> bool:
        return False  # without one, libpq's ~/.pgpass (or trust) applies

    def secret_problems(self) -> list[str]:
        found = []
        if self.retry_cap < self.retry_base:
            found.append("retry_cap must be at least retry_base")
        if self.max_intent_age < MIN_INTENT_AGE:
            found.append(f"max_intent_age must be at least {MIN_INTENT_AGE:.0f} s (one day)")
        if self.intent_retention < 3600.0 or self.audit_retention < 3600.0:
            found.append("intent_retention and audit_retention must be at least 1h")
        if self.pending_connections_per_address > self.pending_connections:
            found.append("pending_connections_per_address must be at most pending_connections")
        found.extend(_proxy_problems(self.proxy_protocol_from))
        if self.public_mqtt_port is not None and self.public_mqtt_port > 65535:
            found.append("public_mqtt_port must be a TCP port (1..65535)")
        if not 3.0 <= self.lease <= 3600.0:
            found.append("lease must be within 3..3600 seconds")
        if not 1.0 <= self.store_timeout <= 3600.0:
            found.append("store_timeout must be within 1..3600 seconds")
        if self.store is not None:
            try:
                self.store_url(None)  # refuses a bad URL, or a password written into it
            except ConfigError as exc:
                found.append(exc.detail)
        return found

    def store_url(self, override: str | None) -> StoreUrl | None:
        """The store from `--store` (override) or `store`, with the password; None: SQLite in the data dir.

        ConfigError for a bad URL or a password written into it.
        """
        text = override or self.store
        if text is None:
            return None
        return StoreUrl.parse(text, password=self.secret("store_password"))

    @property
    def connection_limits(self) -> ConnectionLimits:
        proxies = tuple(ipaddress.ip_network(text, strict=False) for text in self.proxy_protocol_from)
        return ConnectionLimits(self.pending_connections_per_address, self.pending_connections, proxies)

    @property
    def enroll_limits(self) -> EnrollLimits:
        return EnrollLimits(
            per_address_per_minute=self.enroll_per_address_per_minute, per_minute=self.enroll_per_minute
        )


def _proxy_problems(networks: list[str]) -> list[str]:
    found = []
    for text in networks:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            found.append(f"proxy_protocol_from: {text!r} is not an address or a network (10.0.0.5, 10.0.0.0/24)")
            continue
        if network.prefixlen == 0:
            found.append(f"proxy_protocol_from: {text!r} would let anyone name the address it connects from")
    return found
