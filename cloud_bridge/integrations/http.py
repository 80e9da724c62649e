"""http.request: a call to a configured API with the bridge's credential injected.

Only to the credential's base URLs and methods, TLS always verified, redirects never followed,
every connection through the SSRF guard. Errors carry the status and the standard reason only:
a provider may echo request headers (and so the secret) in its body or status line.

The client is aiohttp's: through httpx an intent cost ~2 ms of CPU at 16 concurrent requests (its
pool is quadratic in connections), through aiohttp ~0.3 ms, CPU the bridge's admission path needs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from cloud_bridge.config import parse_section
from cloud_bridge.config.integrations import HttpConfig
from cloud_bridge.errors import BridgeError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.faults import talking_to
from cloud_bridge.integrations.http_credentials import (
    HEADER_NAME,
    AuthKind,
    Credential,
    header_key,
    reserved_header,
)
from cloud_bridge.integrations.http_status import CALL_TIMEOUTS, parse_retry_after, status_error
from cloud_bridge.integrations.ssrf import GuardedResolver, SsrfGuard
from cloud_bridge.integrations.tls import tls_context
from cloud_bridge.integrations.url_scope import KEEP_ANSWERS, KEEP_LEN, BaseUrl, port_of
from cloud_bridge.secrets import redact_in_logs

__all__ = [
    "AuthKind",
    "BaseUrl",
    "Credential",
    "HttpIntegration",
    "aiohttp_error",
]

log = logging.getLogger(__name__)

_MAX_DRAIN: Final = 64 * 1024
# The longest header line (and field) of an answer read: aiohttp's default, 8,190 bytes, made a 200 carrying a
# 9 KB Content-Security-Policy or cookie a broken connection (http_connection), and the request was sent
# again, up to max_attempts times. Python's http.client reads 64 KiB lines; httpx (sms.send) 100 KiB of head.
MAX_HEADER_LINE: Final = 64 * 1024
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Kept as written in a request target; everything else (non-ASCII, '{', '|', ...) is percent-encoded.
_TARGET_SAFE: Final = "!$&'()*+,/:;=?@[]~%"


def aiohttp_error(exc: BaseException, host: str, prefix: str = "http") -> BridgeError:
    """Map an aiohttp exception (or timeout) to a bridge error naming its class, the host and what failed.

    A BridgeError from the SSRF guard in the resolver comes back as itself, however aiohttp wrapped it.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BridgeError):
            return cause
        cause = cause.__cause__
    detail = talking_to(exc, host)
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts subclass it too
        return TransientError(detail, code=f"{prefix}_timeout")
    # ClientResponseError here is a response aiohttp could not parse: a transport fault, as in httpx.
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return TransientError(detail, code=f"{prefix}_connection")
    return PermanentError(detail, code=f"{prefix}_error")


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
        self._context = context
        # `timeout` bounds each wait; the whole call is bounded too, at CALL_TIMEOUTS of them: a provider
        # sending a byte every `timeout` held a call (and its executor slot) for days.
        self._timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUTS * timeout, connect=timeout, sock_read=timeout)
        self._client: aiohttp.ClientSession | None = None
        # The same URL makes the same target (about 6 us to build and check): kept, as UrlScope keeps
        # its answers. A refused host raises and is not kept.
        self._kept_target = lru_cache(maxsize=KEEP_ANSWERS)(self._target)

    def _session(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp binds a session to the running loop; from_config may run before one.
        if self._client is None:
            connector = aiohttp.TCPConnector(
                ssl=self._context,
                resolver=GuardedResolver(self._guard),
                use_dns_cache=False,  # every new connection's addresses come fresh from the guard
                limit=max(self.concurrency, 1),  # 0 would mean no limit
            )
            self._client = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                trust_env=False,
                # A provider's cookie must not ride along on another tenant's request.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Bodies are dropped: no work (or decompression bomb) inflating them.
                auto_decompress=False,
                max_line_size=MAX_HEADER_LINE,
                max_field_size=MAX_HEADER_LINE,
            )
        return self._client

    @classmethod
    def from_settings(cls, config: HttpConfig, *, guard: SsrfGuard | None = None) -> HttpIntegration:
        """Build from the validated `[integrations.http]`."""
        return cls(
            {name: Credential.from_settings(name, body) for name, body in config.credentials.items()},
            guard=guard or SsrfGuard(config.allow_private_hosts, lookups=config.concurrency),
            context=tls_context(config.ca_file),
            concurrency=config.concurrency,
            timeout=config.timeout,
        )

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], env: Mapping[str, str], *, guard: SsrfGuard | None = None
    ) -> HttpIntegration:
        """Build from a plain `[integrations.http]` table; ConfigError with every problem."""
        return cls.from_settings(parse_section(HttpConfig, section, env, "integrations.http"), guard=guard)

    def _request_parts(self, job: Job) -> tuple[Credential, str, URL, dict[str, str]]:
        payload = job.payload
        credential = self._credentials.get(str(payload.get("credential")))
        if credential is None:
            raise PermanentError("credential is not configured at the bridge", code="policy_credential")
        method, url = credential.request(payload)
        target = self._kept_target(url) if len(url) <= KEEP_LEN else self._target(url)
        headers: dict[str, str] = {}
        for name, value in (payload.get("headers") or {}).items():
            if not isinstance(name, str) or not isinstance(value, str) or _CONTROL.search(value):
                raise PermanentError("header values must be single-line strings", code="bad_request")
            if not HEADER_NAME.fullmatch(name):
                raise PermanentError("header names must be RFC 9110 tokens", code="bad_request")
            if reserved_header(name) or header_key(name) == header_key(credential.header):
                raise PermanentError(f"header {name!r} is set by the bridge", code="http_header_forbidden")
            headers[name] = value
        header, secret_value = credential.auth_header()
        headers[header] = secret_value
        headers["Idempotency-Key"] = job.idempotency_key
        return credential, method, target, headers

    def _target(self, url: str) -> URL:
        target = _wire_url(url)
        # yarl rewrites some hosts (NFKC makes fullwidth digits ASCII: a name becomes 127.0.0.1) and
        # aiohttp connects to a literal without asking the resolver: the host it will use is checked.
        for host in {urlsplit(url).hostname or "", target.raw_host or ""}:
            self._guard.check_literal(host)
        return target

    async def execute(self, job: Job) -> Outcome:
        """Send the request; 2xx is an Outcome, anything else a bridge error without body or headers."""
        _, method, url, headers = self._request_parts(job)
        host = url.raw_host or ""
        body: dict[str, Any] = {}
        if "json" in job.payload:
            body["json"] = job.payload["json"]
        else:
            # aiohttp would label a raw body (or none) application/octet-stream; the app says, or nobody.
            body["skip_auto_headers"] = ("Content-Type",)
            if "body" in job.payload:
                body["data"] = str(job.payload["body"]).encode()
        error: BridgeError
        try:
            request = self._session().request(method, url, headers=headers, allow_redirects=False, **body)
            async with request as response:
                status = response.status
                retry_after_text = response.headers.get("Retry-After")
                await _discard_body(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Raised below, not here: aiohttp's exception holds the request headers (the secret) and
            # would ride along as the error's __context__.
            error = aiohttp_error(exc, host)
        else:
            log.debug("http.request %s to %s answered %d", method, host, status)
            if 200 <= status < 300:
                return Outcome(f"HTTP {status}")
            error = status_error(status, parse_retry_after(retry_after_text, self._now()))
        raise error

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def _wire_url(url: str) -> URL:
    """The URL for aiohttp with the path and query sent as given: escapes kept, non-ASCII encoded.

    yarl's default parsing requotes ('%2F' in a query becomes '/', '%41' becomes 'A'), which changes
    what a provider routes on or verifies a signature over.
    """
    parts = urlsplit(url)
    try:
        host = URL(f"{parts.scheme}://{parts.netloc}").raw_host or ""  # IDNA-encoded, as aiohttp sees it
    except ValueError:
        raise PermanentError("URL refused: bad host", code="policy_url") from None
    netloc = f"[{host}]:{port_of(parts)}" if ":" in host else f"{host}:{port_of(parts)}"
    query = f"?{quote(parts.query, safe=_TARGET_SAFE)}" if parts.query else ""
    return URL(f"{parts.scheme}://{netloc}{quote(parts.path or '/', safe=_TARGET_SAFE)}{query}", encoded=True)


async def _discard_body(response: aiohttp.ClientResponse) -> None:
    """Read and drop a short body, so the connection goes back to the pool for the next request.

    Leaving it unread closes the connection: one TCP connect (and SSRF check) per request.
    A body over _MAX_DRAIN is not worth reading; that connection closes instead. A read error is
    ignored: the status is in, the request was delivered; aiohttp drops that connection itself.
    """
    read = 0
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        while chunk := await response.content.readany():
            read += len(chunk)
            if read > _MAX_DRAIN:
                response.close()
                return
