"""http.request: a call to a configured API with the bridge's credential injected.

Only to the credential's base URLs and methods, TLS always verified, redirects never followed,
every connection through the SSRF guard. Errors carry the status and the standard reason only:
a provider may echo request headers (and so the secret) in its body or status line.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

import httpcore
import httpx

from cloud_bridge.errors import ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.ssrf import GuardedBackend, SsrfGuard
from cloud_bridge.secrets import Secret, redact_in_logs, resolve_secret
from intent_contract.names import is_name

log = logging.getLogger(__name__)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_RESERVED_HEADERS: Final = frozenset(
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
_MAX_DRAIN: Final = 64 * 1024


class AuthKind(StrEnum):
    BEARER = "bearer"
    BASIC = "basic"
    HEADER = "header"


def tls_context(ca_file: object) -> ssl.SSLContext:
    """A verifying client TLS context; with `ca_file`, only that CA is trusted."""
    if ca_file is not None and not isinstance(ca_file, str):
        raise ConfigError("ca_file must be a path")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load ca_file {ca_file!r}: {exc.__class__.__name__}") from None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def status_error(
    status: int, retry_after: float | None, prefix: str = "http", note: str = ""
) -> TransientError | PermanentError:
    """The bridge error for a non-2xx status: 408/429/5xx retry, 3xx and other 4xx fail.

    The detail is the status and its standard reason phrase (plus `note`), never the provider's text.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "unknown status"
    detail = f"HTTP {status} {reason}{note}"
    if 300 <= status < 400:
        return PermanentError(detail + " (redirects are not followed)", code=f"{prefix}_redirect")
    if status in (408, 429) or status >= 500:
        return TransientError(detail, code=f"{prefix}_{status}", retry_after=retry_after)
    return PermanentError(detail, code=f"{prefix}_{status}")


def transport_error(exc: httpx.HTTPError, host: str, prefix: str = "http") -> TransientError | PermanentError:
    """Map an httpx exception to a bridge error naming only its class and the host."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{exc.__class__.__name__} talking to {host}", code=f"{prefix}_timeout")
    if isinstance(exc, httpx.TransportError):
        return TransientError(f"{exc.__class__.__name__} talking to {host}", code=f"{prefix}_connection")
    return PermanentError(f"{exc.__class__.__name__} talking to {host}", code=f"{prefix}_error")


def guarded_transport(guard: SsrfGuard, context: ssl.SSLContext, max_connections: int) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every TCP connection goes through the SSRF guard."""
    transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False)
    # httpx has no public hook for the network backend; the pool it builds is replaced by one that
    # connects through the guard (same settings, TLS verified with the original host name as SNI).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context, max_connections=max_connections, network_backend=GuardedBackend(guard)
    )
    return transport


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
        return cls(parts.scheme, parts.hostname or "", _port(parts), path if path.endswith("/") else path + "/")

    def contains(self, parts: SplitResult) -> bool:
        path = parts.path or "/"
        same_origin = (parts.scheme, parts.hostname, _port(parts)) == (self.scheme, self.host, self.port)
        return same_origin and path.startswith(self.path)

    def join(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path.rstrip('/')}{path}"


def _port(parts: SplitResult) -> int:
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
    _port(parts)  # raises ValueError for a bad port
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
        if not isinstance(header, str) or not header or header.lower() in _RESERVED_HEADERS - {"authorization"}:
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
        return f"{parts.scheme}://{host}:{_port(parts)}{parts.path or '/'}{query}"


class HttpIntegration:
    """Runs http.request jobs with injected credentials."""

    kind = "http.request"

    def __init__(
        self,
        credentials: Mapping[str, Credential],
        *,
        guard: SsrfGuard,
        context: ssl.SSLContext,
        concurrency: int = 8,
        timeout: float = 30.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.concurrency = concurrency
        self._credentials = dict(credentials)
        for credential in self._credentials.values():
            redact_in_logs(credential.secret_values())
        self._guard = guard
        self._now = now
        transport = guarded_transport(guard, context, max_connections=max(concurrency, 1))
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, timeout=timeout)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], env: Mapping[str, str], *, guard: SsrfGuard | None = None
    ) -> HttpIntegration:
        """Build from `[integrations.http]`; raises ConfigError."""
        unknown = set(section) - {"concurrency", "allow_private_hosts", "ca_file", "timeout", "credentials"}
        if unknown:
            raise ConfigError(f"integrations.http: unknown keys {sorted(unknown)}")
        allow = section.get("allow_private_hosts", [])
        if not isinstance(allow, list) or not all(isinstance(h, str) for h in allow):
            raise ConfigError("integrations.http.allow_private_hosts must be a list of host names or IPs")
        creds = section.get("credentials", {})
        if not isinstance(creds, Mapping):
            raise ConfigError("integrations.http.credentials must be a table")
        return cls(
            {name: Credential.from_config(name, body, env) for name, body in creds.items()},
            guard=guard or SsrfGuard(allow),
            context=tls_context(section.get("ca_file")),
            concurrency=positive(section, "concurrency", 8, "integrations.http"),
            timeout=float(positive(section, "timeout", 30, "integrations.http")),
        )

    def _request_parts(self, job: Job) -> tuple[Credential, str, str, dict[str, str]]:
        payload = job.payload
        credential = self._credentials.get(str(payload.get("credential")))
        if credential is None:
            raise PermanentError("credential is not configured at the bridge", code="policy_credential")
        method = str(payload.get("method", "")).upper()
        if method not in credential.methods:
            raise PermanentError(f"method {method!r} is not allowed for this credential", code="policy_method")
        url = credential.target_url(payload)
        self._guard.check_literal(urlsplit(url).hostname or "")
        headers: dict[str, str] = {}
        for name, value in (payload.get("headers") or {}).items():
            if not isinstance(name, str) or not isinstance(value, str) or any(c in value for c in "\r\n\0"):
                raise PermanentError("header values must be single-line strings", code="bad_request")
            if name.lower() in _RESERVED_HEADERS or name.lower() == credential.header.lower():
                raise PermanentError(f"header {name!r} is set by the bridge", code="http_header_forbidden")
            headers[name] = value
        header, secret_value = credential.auth_header()
        headers[header] = secret_value
        headers["Idempotency-Key"] = job.idempotency_key
        return credential, method, url, headers

    async def execute(self, job: Job) -> Outcome:
        """Send the request; 2xx is an Outcome, anything else a bridge error without body or headers."""
        _, method, url, headers = self._request_parts(job)
        host = urlsplit(url).hostname or ""
        body: dict[str, Any] = {}
        if "json" in job.payload:
            body["json"] = job.payload["json"]
        elif "body" in job.payload:
            body["content"] = str(job.payload["body"]).encode()
        try:
            async with self._client.stream(method, url, headers=headers, **body) as response:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"), self._now())
                with contextlib.suppress(httpx.HTTPError):  # the answer is in; the body is not needed
                    await _discard_body(response)
        except httpx.HTTPError as exc:
            raise transport_error(exc, host) from None
        log.debug("http.request %s to %s answered %d", method, host, status)
        if 200 <= status < 300:
            return Outcome(f"HTTP {status}")
        raise status_error(status, retry_after)

    async def aclose(self) -> None:
        await self._client.aclose()


async def _discard_body(response: httpx.Response) -> None:
    """Read and drop a short body, so the connection goes back to the pool for the next request.

    Leaving it unread closed the connection: one TCP connect (and SSRF check) per request.
    A body over _MAX_DRAIN is not worth reading; that connection closes instead.
    """
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > _MAX_DRAIN:
            return


def positive(section: Mapping[str, Any], key: str, default: int, where: str) -> int:
    """A positive integer setting, or ConfigError."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.{key} must be a positive integer")
    return value
