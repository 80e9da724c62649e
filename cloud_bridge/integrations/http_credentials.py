"""Where an http.request credential may be sent: its base URLs, methods and how it is presented.

Kept apart from the client: this is the policy a device's payload is checked against before any
request exists, and it knows nothing of the HTTP library that sends it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from cloud_bridge.errors import ConfigError, PermanentError
from cloud_bridge.secrets import Secret, resolve_secret
from intent_contract.names import is_name

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
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
    }
)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
# RFC 9110 field names. A client that writes any name it is given sends 'Host:evil: x' as a Host header.
HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class AuthKind(StrEnum):
    BEARER = "bearer"
    BASIC = "basic"
    HEADER = "header"


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """A normalised allowed base: scheme, lower-case host, explicit port, path ending in '/'."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> BaseUrl:
        parts = _split(text)
        if parts.query or parts.fragment:
            raise ValueError("a base URL has no query or fragment")
        path = parts.path or "/"
        return cls(parts.scheme, parts.hostname or "", port_of(parts), path if path.endswith("/") else path + "/")

    def contains(self, parts: SplitResult) -> bool:
        path = parts.path or "/"
        same_origin = (parts.scheme, parts.hostname, port_of(parts)) == (self.scheme, self.host, self.port)
        return same_origin and path.startswith(self.path)

    def join(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path.rstrip('/')}{path}"


def port_of(parts: SplitResult) -> int:
    return parts.port if parts.port is not None else _DEFAULT_PORTS[parts.scheme]


def _split(text: str) -> SplitResult:
    """Parse a URL strictly; raises ValueError for anything a server might read differently."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in text):
        raise ValueError("whitespace, control characters or backslashes in URL")
    parts = urlsplit(text)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("only http and https URLs")
    if "@" in parts.netloc:
        raise ValueError("userinfo in URL")
    if not parts.hostname:
        raise ValueError("no host in URL")
    port_of(parts)  # raises ValueError for a bad port
    for segment in parts.path.split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            raise ValueError("dot segments or encoded slashes in path")
    return parts


@dataclass(frozen=True, slots=True)
class Credential:
    """A named API credential: where it may be sent, with which methods, and how it is presented."""

    name: str
    base_urls: tuple[BaseUrl, ...]
    methods: frozenset[str]
    auth: AuthKind
    header: str
    token: Secret | None = None
    username: str | None = None
    password: Secret | None = None

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any], env: Mapping[str, str]) -> Credential:
        where = f"integrations.http.credentials.{name}"
        if not is_name(name) or not isinstance(section, Mapping):
            raise ConfigError(f"{where}: credential names must be valid names with a table")
        urls = section.get("base_urls")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ConfigError(f"{where}.base_urls must be a non-empty list of URLs")
        try:
            bases = tuple(BaseUrl.parse(u) for u in urls)
        except ValueError as exc:
            raise ConfigError(f"{where}.base_urls: {exc}") from None
        methods = section.get("methods", ["GET", "POST"])
        if not isinstance(methods, list) or not methods or not set(methods) <= _METHODS:
            raise ConfigError(f"{where}.methods must be a list from {sorted(_METHODS)}")
        try:
            auth = AuthKind(section.get("auth", "bearer"))
        except ValueError:
            raise ConfigError(f"{where}.auth must be one of {[a.value for a in AuthKind]}") from None
        if auth is AuthKind.BASIC:
            username = section.get("username")
            if not isinstance(username, str) or not username:
                raise ConfigError(f"{where}.username is required for basic auth")
            return cls(name, bases, frozenset(methods), auth, "Authorization", None, username,
                       resolve_secret(section, "password", env))  # fmt: skip
        header = section.get("header", "Authorization") if auth is AuthKind.HEADER else "Authorization"
        if (
            not isinstance(header, str)
            or not HEADER_NAME.fullmatch(header)
            or header.lower() in RESERVED_HEADERS - {"authorization"}
        ):
            raise ConfigError(f"{where}.header must be a header name")
        return cls(name, bases, frozenset(methods), auth, header, resolve_secret(section, "token", env))

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

    def target_url(self, payload: Mapping[str, Any]) -> str:
        """The URL to call for `payload` (path or url), or PermanentError(code='policy_url')."""
        url, path = payload.get("url"), payload.get("path")
        if isinstance(path, str) and path.startswith("/") and url is None:
            url = self.base_urls[0].join(path)
        if not isinstance(url, str):
            raise PermanentError("give either a path starting with '/' or a url", code="policy_url")
        try:
            parts = _split(url)
        except ValueError as exc:
            raise PermanentError(f"URL refused: {exc}", code="policy_url") from None
        if parts.fragment or not any(base.contains(parts) for base in self.base_urls):
            raise PermanentError(f"URL is not under credential {self.name!r}'s base URLs", code="policy_url")
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{host}:{port_of(parts)}{parts.path or '/'}{query}"
