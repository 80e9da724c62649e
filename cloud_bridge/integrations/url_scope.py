"""Where an http.request may go: under a credential's base URLs, with its methods. No secret here.

Pure and shared by two deciders: policy checks a payload against the scope at admission (where a
tenant or device may have narrowed it), and the integration checks it again against the
credential's own scope before it sends. Both resolve a `path` against the credential's first base
URL, so the URL admitted is the URL sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from cloud_bridge.errors import ConfigError, PermanentError

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_METHODS: Final = ["GET", "POST"]
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Whitespace as str.isspace() sees it (re's \s for a str pattern is the same test), control characters
# and backslashes: one regex search instead of a Python loop over the URL (half of a check's time).
_UNSAFE: Final = re.compile(r"[\s\x00-\x1f\x7f\\]")
# An answer is kept for URLs and paths up to this length, and this many answers are kept: bounded memory
# (under 8 MB) whatever the apps send. See UrlScope.request.
KEEP_LEN: Final = 2048
KEEP_ANSWERS: Final = 1024
_MAX_DECODES: Final = 4
_U_ESCAPE: Final = re.compile(r"%u[0-9a-f]{4}", re.IGNORECASE)


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

    def within(self, other: BaseUrl) -> bool:
        """True when everything under this base is also under `other`."""
        return (self.scheme, self.host, self.port) == (other.scheme, other.host, other.port) and self.path.startswith(
            other.path
        )

    def join(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path.rstrip('/')}{path}"


def port_of(parts: SplitResult) -> int:
    return parts.port if parts.port is not None else _DEFAULT_PORTS[parts.scheme]


@dataclass(frozen=True, slots=True)
class UrlScope:
    """Allowed base URLs and methods; a `path` is appended to `path_base` (the credential's first base)."""

    base_urls: tuple[BaseUrl, ...]
    methods: frozenset[str]
    path_base: BaseUrl

    @classmethod
    def from_config(cls, section: Mapping[str, Any], where: str) -> UrlScope:
        """From a credential's `base_urls` (required) and `methods` (default GET, POST); raises ConfigError."""
        bases = _base_urls(section.get("base_urls"), f"{where}.base_urls")
        return cls(bases, _methods(section.get("methods", _DEFAULT_METHODS), f"{where}.methods"), bases[0])

    def narrowed(self, section: object, where: str) -> UrlScope:
        """This scope restricted by a policy table `{base_urls?, methods?}`; ConfigError if it would widen it."""
        if not isinstance(section, Mapping) or not section or set(section) - {"base_urls", "methods"}:
            raise ConfigError(f"{where} must be a table of base_urls and/or methods")
        scope = self
        if "base_urls" in section:
            bases = _base_urls(section["base_urls"], f"{where}.base_urls")
            # Positions, not the URLs: config problems quote no value (a URL's path may hold a webhook's key).
            outside = [str(n) for n, b in enumerate(bases) if not any(b.within(mine) for mine in self.base_urls)]
            if outside:
                raise ConfigError(
                    f"{where}.base_urls: entry {', '.join(outside)} not under the credential's own base_urls"
                )
            scope = replace(scope, base_urls=bases)
        if "methods" in section:
            methods = _methods(section["methods"], f"{where}.methods")
            if not methods <= self.methods:
                raise ConfigError(f"{where}.methods: {sorted(methods - self.methods)} not in {sorted(self.methods)}")
            scope = replace(scope, methods=methods)
        return scope

    def request(self, payload: Mapping[str, Any], credential: str) -> tuple[str, str]:
        """(method, URL) to call for `payload`; PermanentError `policy_method` or `policy_url` otherwise.

        It runs twice per intent (policy at admission, the integration before it sends) and takes 15-20 us,
        while an app's intents mostly name a few URLs: the answer for a scope, method, url and path is kept
        (`_resolve_kept`: it is a pure function of them). Refusals are not kept.
        """
        method = str(payload.get("method", "")).upper()
        if method not in self.methods:
            raise PermanentError(f"method {method!r} is not allowed for {credential!r}", code="policy_method")
        url, path = payload.get("url"), payload.get("path")
        if _keepable(url) and _keepable(path):
            return _resolve_kept(self, method, url, path, credential)
        return self._resolve(method, url, path, credential)

    def _resolve(self, method: str, url: object, path: object, credential: str) -> tuple[str, str]:
        if isinstance(path, str) and path.startswith("/") and url is None:
            url = self.path_base.join(path)
        if not isinstance(url, str):
            raise PermanentError("give either a path starting with '/' or a url", code="policy_url")
        try:
            parts = _split(url)
        except ValueError as exc:
            raise PermanentError(f"URL refused: {exc}", code="policy_url") from None
        if parts.fragment or not any(base.contains(parts) for base in self.base_urls):
            raise PermanentError(f"URL is not under credential {credential!r}'s allowed base URLs", code="policy_url")
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        query = f"?{parts.query}" if parts.query else ""
        return method, f"{parts.scheme}://{host}:{port_of(parts)}{parts.path or '/'}{query}"


_resolve_kept = lru_cache(maxsize=KEEP_ANSWERS)(UrlScope._resolve)


def _keepable(value: object) -> bool:
    """A url or path an answer may be kept for: absent, or a string of at most KEEP_LEN characters."""
    return value is None or (type(value) is str and len(value) <= KEEP_LEN)


def credential_scopes(integrations: Mapping[str, Any]) -> dict[str, UrlScope] | None:
    """Every `[integrations.http.credentials.NAME]` scope, or None when http.request is not configured."""
    http = integrations.get("http")
    if http is None:
        return None
    credentials = http.get("credentials", {}) if isinstance(http, Mapping) else None
    if not isinstance(credentials, Mapping):
        raise ConfigError("integrations.http.credentials must be a table")
    scopes = {}
    for name, body in credentials.items():
        where = f"integrations.http.credentials.{name}"
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where} must be a table")
        scopes[name] = UrlScope.from_config(body, where)
    return scopes


def _base_urls(value: object, where: str) -> tuple[BaseUrl, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(u, str) for u in value):
        raise ConfigError(f"{where} must be a non-empty list of URLs")
    try:
        return tuple(BaseUrl.parse(u) for u in value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _methods(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not set(value) <= METHODS:
        raise ConfigError(f"{where} must be a list from {sorted(METHODS)}")
    return frozenset(value)


def _split(text: str) -> SplitResult:
    """Parse a URL strictly; raises ValueError for anything a server might read differently."""
    if _UNSAFE.search(text):
        raise ValueError("whitespace, control characters or backslashes in URL")
    try:
        parts = urlsplit(text)
    except ValueError:
        # Not its words: "netloc 'user:s3cret@api.example℀' contains invalid characters under NFKC normalization"
        # quoted the URL's password in the refusal's detail (ledger, audit, the app's status).
        raise ValueError("the URL does not parse (a bracket or a character its host may not have)") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("only http and https URLs")
    if "@" in parts.netloc:
        raise ValueError("userinfo in URL")
    if not parts.hostname:
        raise ValueError("no host in URL")
    try:
        port_of(parts)
    except ValueError:  # its words quote what stands after the ':'
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    for segment in parts.path.split("/"):
        decoded = _fully_decoded(segment)
        # ';' starts a path parameter: Tomcat and Spring read '/api/..;/admin' as '/admin'.
        if decoded in (".", "..") or any(c in decoded for c in "/\\;"):
            raise ValueError("dot segments, path parameters (';') or encoded slashes in path")
        if _CONTROL.search(decoded):
            raise ValueError("encoded control characters in path")
    return parts


def _fully_decoded(segment: str) -> str:
    """The segment percent-decoded until nothing changes, as a chain of decoding servers could see it.

    '%252e%252e' is '..' to a proxy and a server that each decode once. Escapes that are not UTF-8
    (the overlong '%c0%ae', which old servers read as '.') and IIS's '%u002e' are refused: a server
    may read them as something this check cannot see.
    """
    for _ in range(_MAX_DECODES):
        try:
            decoded = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            raise ValueError("percent-encoding that is not UTF-8 in path") from None
        if decoded == segment:
            if _U_ESCAPE.search(decoded):
                raise ValueError("%u escapes in path")
            return decoded
        segment = decoded
    raise ValueError("percent-encoding nested too deep in path")
