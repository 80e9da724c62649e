"""`[integrations.*]`: one table per integration, typed to the leaves; secrets read when the file is.

The integration modules build their clients from these (`from_settings`); nothing here opens a
connection. Checks that need a library the integration uses (Apprise for notify URLs) import it only
when that table is present.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from cloud_bridge.config.fields import Name, Port, Positive, PositiveInt, SecretSection, Section, Text, invalid
from cloud_bridge.errors import ConfigError
from cloud_bridge.integrations.http_credentials import HEADER_NAME, reserved_header
from cloud_bridge.integrations.tls import tls_context
from cloud_bridge.integrations.url_scope import METHODS, UrlScope

SID: Final = re.compile(r"^[A-Za-z0-9]{1,64}$")


def _ca_file(value: str) -> str:
    try:
        tls_context(value)
    except ConfigError as exc:
        raise invalid(exc.detail) from None
    return value


def _method(value: str) -> str:
    if value not in METHODS:
        raise invalid(f"not one of {', '.join(sorted(METHODS))}")
    return value


CaFile = Annotated[str, AfterValidator(_ca_file)]
Method = Annotated[str, AfterValidator(_method)]
Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS: Final[dict[str, int]] = {"starttls": 587, "tls": 465, "none": 25}


class SmtpConfig(SecretSection):
    """`[integrations.smtp]`: email.send through one SMTP relay."""

    SECRETS = ("password",)

    host: Annotated[str, AfterValidator(_relay_host)] = Field(
        min_length=1, description="the SMTP relay (a host name or an IP address)"
    )
    security: Security = Field(
        "starttls", description="`starttls` (required, never downgraded), `tls` (implicit TLS) or `none`"
    )
    port: Port | None = Field(None, description="default 587, 465 or 25, by `security`")
    username: Text | None = Field(None, description="AUTH user name; needs a password")
    password_env: Text | None = Field(None, description="environment variable holding the AUTH password")
    password_file: Text | None = Field(None, description="file holding the AUTH password")
    ca_file: CaFile | None = Field(None, description="trust only this CA (PEM) instead of the system's")
    timeout: Positive = Field(30.0, description="seconds for connecting and each reply; a message at most 3 times it")
    concurrency: PositiveInt = Field(4, description="emails sent at once")

    def required(self, name: str) -> bool:
        return self.username is not None

    def secret_problems(self) -> list[str]:
        found = []
        if self.username is None and self.secret("password") is not None:
            found.append("a password needs a username")
        # The client waited for a greeting while the relay waited for a TLS hello (or the reverse): every email
        # held its slot for `timeout` and ended `SMTPConnectTimeoutError` (or a TLS failure), the relay up.
        if self.port == 465 and self.security != "tls":
            found.append('port 465 is implicit TLS (RFC 8314): give security = "tls"')
        if self.port in (25, 587) and self.security == "tls":
            found.append(f'port {self.port} starts in plain SMTP: give security = "starttls" for TLS')
        return found

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.security]


def _relay_host(value: str) -> str:
    """A host name or an IP address: what the relay's name lookup takes. A port or a URL written here (the usual
    slips: `smtp.example.com:587`, `smtps://...`) was taken, and every email was retried until it failed."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    if any(c.isspace() or not c.isprintable() or c in "/:@?#[]\\" for c in value):
        raise invalid("must be a host name or an IP address (no port: that is `port`; no scheme)")
    return value


def _api_base(value: str) -> str:
    """An https:// URL with a host and a valid port, and no user, password, query or fragment.

    `https://`, a port past 65535 or a space in it was taken, and every sms.send was retried until it failed
    (`UnsupportedProtocol talking to `); a password in it would be a secret in a key that is not one.
    """
    if not value.startswith("https://"):
        raise invalid("must be an https:// URL")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise invalid("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise invalid("must be an https:// URL with a valid host and port") from None
    if not parts.hostname:
        raise invalid("must name a host")
    if "@" in parts.netloc:
        raise invalid("must not carry a user or password (the token goes in auth_token_env or auth_token_file)")
    if "?" in value or "#" in value:
        raise invalid("must not have a query or a fragment")
    return value


def _sid(value: str) -> str:
    if not SID.fullmatch(value):
        raise invalid("must be letters and digits (at most 64)")
    return value


class SmsConfig(SecretSection):
    """`[integrations.sms]`: sms.send through a Twilio-compatible Messages API."""

    SECRETS = ("auth_token",)

    base_url: Annotated[str, AfterValidator(_api_base)] = Field(
        "https://api.twilio.com", description="the API's base URL (https only)"
    )
    account_sid: Annotated[str, AfterValidator(_sid)] = Field(description="the account id (basic auth user)")
    auth_token_env: Text | None = Field(None, description="environment variable holding the auth token")
    auth_token_file: Text | None = Field(None, description="file holding the auth token")
    sender: Text = Field(alias="from", description="the sender number or id")
    ca_file: CaFile | None = Field(None, description="trust only this CA (PEM) instead of the system's")
    timeout: Positive = Field(30.0, description="seconds for connecting and each reply; a call at most 3 times it")
    concurrency: PositiveInt = Field(4, description="messages sent at once")


AuthKind = Literal["bearer", "basic", "header"]


class CredentialConfig(SecretSection):
    """`[integrations.http.credentials.NAME]`: where an http.request credential may go, and its secret."""

    SECRETS = ("token", "password")

    base_urls: list[str] = Field(description="the URLs requests must be under; a `path` joins the first")
    methods: list[Method] = Field(["GET", "POST"], description="the HTTP methods allowed")
    auth: AuthKind = Field("bearer", description="`bearer`, `basic` or `header`")
    header: str | None = Field(None, description='the header that carries the token (`auth = "header"` only)')
    username: Text | None = Field(None, description='basic auth user name (`auth = "basic"`)')
    token_env: Text | None = Field(None, description="environment variable holding the token (bearer, header)")
    token_file: Text | None = Field(None, description="file holding the token (bearer, header)")
    password_env: Text | None = Field(None, description="environment variable holding the password (basic)")
    password_file: Text | None = Field(None, description="file holding the password (basic)")

    def required(self, name: str) -> bool:
        return name == ("password" if self.auth == "basic" else "token")

    def secret_problems(self) -> list[str]:
        found = []
        try:
            self.scope()  # every base URL and method checked now
        except ConfigError as exc:
            found.append(exc.detail.lstrip("."))
        if self.auth == "basic" and self.username is None:
            found.append("username is required for basic auth")
        if self.header is not None and (
            self.auth != "header"
            or not HEADER_NAME.fullmatch(self.header)
            or (reserved_header(self.header) and self.header.lower() != "authorization")
        ):
            found.append('header must be a header name, with auth = "header"')
        return found

    def scope(self) -> UrlScope:
        """Where this credential may be sent; ConfigError for a bad base URL."""
        return UrlScope.from_config({"base_urls": self.base_urls, "methods": self.methods}, "")


class HttpConfig(Section):
    """`[integrations.http]`: http.request with the bridge's credentials injected."""

    concurrency: PositiveInt = Field(8, description="requests in flight at once (and connections)")
    allow_private_hosts: list[Text] = Field([], description="host names or IPs exempt from the SSRF guard")
    ca_file: CaFile | None = Field(None, description="trust only this CA (PEM) instead of the system's")
    timeout: Positive = Field(
        30.0, description="seconds for connecting and each wait for response bytes; a call at most 3 times it"
    )
    credentials: dict[Name, CredentialConfig] = Field({}, description="the credentials, by name")

    def scopes(self) -> dict[str, UrlScope]:
        """Every credential's scope, for policy to decide URL and method at admission."""
        return {name: credential.scope() for name, credential in self.credentials.items()}


class NotifyTargetConfig(SecretSection):
    """`[integrations.notify.targets.NAME]`: the Apprise URLs of one target (they carry tokens)."""

    SECRETS = ("urls",)

    urls_env: Text | None = Field(None, description="environment variable holding the Apprise URLs")
    urls_file: Text | None = Field(None, description="file holding the Apprise URLs (space or comma separated)")

    def secret_problems(self) -> list[str]:
        from cloud_bridge.integrations.notify import split_urls  # noqa: PLC0415 - Apprise only when configured

        urls = self.secret("urls")
        try:
            if urls is not None:
                split_urls(urls)
        except ConfigError as exc:
            return [exc.detail]
        return []


class NotifyConfig(Section):
    """`[integrations.notify]`: notify through Apprise."""

    concurrency: PositiveInt = Field(2, description="notifications sent at once")
    targets: dict[Name, NotifyTargetConfig] = Field({}, description="the targets, by name")


class IntegrationsConfig(Section):
    """`[integrations]`: a table per integration; one that is absent is not enabled."""

    smtp: SmtpConfig | None = Field(None, description="enables email.send")
    sms: SmsConfig | None = Field(None, description="enables sms.send")
    http: HttpConfig | None = Field(None, description="enables http.request")
    notify: NotifyConfig | None = Field(None, description="enables notify")

    @property
    def any(self) -> bool:
        """Whether any integration is configured here."""
        return any(getattr(self, k) is not None for k in type(self).model_fields)
