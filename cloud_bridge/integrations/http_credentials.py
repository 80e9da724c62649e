"""An http.request credential: its scope (url_scope: where it may be sent) and how it is presented.

Kept apart from the client: it knows nothing of the HTTP library that sends it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from cloud_bridge.integrations.url_scope import UrlScope
from cloud_bridge.secrets import Secret

if TYPE_CHECKING:
    from cloud_bridge.config.integrations import CredentialConfig

RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "authorization",
        "proxy-authorization",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "idempotency-key",
        # What providers' frameworks take as another method, path or client (Express method-override,
        # Rack, Google APIs, Symfony and IIS URL rewrites, X-Forwarded-* trusted behind proxies): a device
        # setting one made a POST under /v1/ a DELETE, or served /admin, beyond the credential's scope.
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "forwarded",
        "x-real-ip",
        "proxy-connection",
        "expect",
    }
)
FORWARDING_PREFIX: Final = "x-forwarded-"


def header_key(name: str) -> str:
    """The name as CGI-style servers read it: case and `_` against `-` do not count.

    WSGI, Rack and PHP (CGI) put both `X-Forwarded-Host` and `X_Forwarded_Host` in `HTTP_X_FORWARDED_HOST`, and
    servers that do not drop names with `_` (older gunicorn and puma) passed `X_HTTP_Method_Override`
    on as the override the bridge refuses.
    """
    return name.lower().replace("_", "-")


def reserved_header(name: str) -> bool:
    """Whether an app may not set header `name` (in any spelling `header_key` equates): the bridge sets it, or
    it redirects what the provider does."""
    key = header_key(name)
    return key in RESERVED_HEADERS or key.startswith(FORWARDING_PREFIX)


# RFC 9110 field names. A client that writes any name it is given sends 'Host:evil: x' as a Host header.
HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class AuthKind(StrEnum):
    BEARER = "bearer"
    BASIC = "basic"
    HEADER = "header"


@dataclass(frozen=True, slots=True)
class Credential:
    """A named API credential: where it may be sent, with which methods, and how it is presented."""

    name: str
    scope: UrlScope
    auth: AuthKind
    header: str
    token: Secret | None = None
    username: str | None = None
    password: Secret | None = None

    @classmethod
    def from_settings(cls, name: str, config: CredentialConfig) -> Credential:
        """Build from a validated `[integrations.http.credentials.NAME]`."""
        auth = AuthKind(config.auth)
        if auth is AuthKind.BASIC:
            return cls(name, config.scope(), auth, "Authorization", None, config.username, config.needed("password"))
        header = config.header if auth is AuthKind.HEADER and config.header else "Authorization"
        return cls(name, config.scope(), auth, header, config.needed("token"))

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any], env: Mapping[str, str]) -> Credential:
        """Build from a plain credential table; ConfigError with every problem."""
        from cloud_bridge.config import parse_section  # noqa: PLC0415 - the config models import this module
        from cloud_bridge.config.integrations import CredentialConfig  # noqa: PLC0415

        where = f"integrations.http.credentials.{name}"
        return cls.from_settings(name, parse_section(CredentialConfig, section, env, where))

    def auth_header(self) -> tuple[str, str]:
        """(name, value) of the header that carries the secret; the only place it is revealed."""
        if self.auth is AuthKind.BASIC:
            assert self.password is not None
            raw = f"{self.username}:{self.password.reveal()}".encode()
            return "Authorization", "Basic " + base64.b64encode(raw).decode("ascii")
        assert self.token is not None
        if self.auth is AuthKind.BEARER:
            return "Authorization", "Bearer " + self.token.reveal()
        return self.header, self.token.reveal()

    def secret_values(self) -> list[str]:
        """Every form in which the secret goes on the wire, for log redaction."""
        name, value = self.auth_header()
        secret = self.password if self.auth is AuthKind.BASIC else self.token
        assert secret is not None
        return [secret.reveal(), value, value.partition(" ")[2] if name == "Authorization" else value]

    def request(self, payload: Mapping[str, Any]) -> tuple[str, str]:
        """(method, URL) for `payload` within this credential's own scope, or PermanentError."""
        return self.scope.request(payload, self.name)
