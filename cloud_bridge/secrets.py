"""Provider secrets: read from the environment or a file named in the config, never shown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, quote_plus

from cloud_bridge.errors import ConfigError

_MASK: Final = "Secret('***')"


class Secret:
    """A secret value whose repr and str are masked; call `reveal()` only where it is sent."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError("a secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        """The plain value, for the one place that hands it to a provider."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling would write the plain value somewhere nobody reviewed.
        raise TypeError("Secret cannot be pickled")


def resolve_secret(
    section: Mapping[str, Any], field: str, env: Mapping[str, str], *, required: bool = True
) -> Secret | None:
    """The secret `field` of a config table, given as `{field}_env` or `{field}_file`.

    A plain `{field}` in the file is refused: secrets are never written into the config. Errors name
    the key, never what it holds: the usual slip is the secret itself written where its variable's
    name or its file's path goes, and a variable's name may look like anything a token looks like.
    """
    if field in section:
        raise ConfigError(f"{field!r} must not be written in the config file; give {field}_env or {field}_file")
    env_key, file_key = f"{field}_env", f"{field}_file"
    if env_key in section and file_key in section:
        raise ConfigError(f"give only one of {env_key!r} and {file_key!r}")
    if env_key in section:
        name = section[env_key]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{env_key!r} must name an environment variable")
        value = env.get(name)
        if not value:
            raise ConfigError(
                f"{env_key}: the environment variable it names is not set or empty"
                " (the name is not shown, in case a secret was written there)"
            )
        return Secret(value)
    if file_key in section:
        path = section[file_key]
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{file_key!r} must be a file path")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # The reason only: the OS error's text quotes the path.
            raise ConfigError(
                f"{file_key}: cannot read the file it names ({exc.__class__.__name__}; the path is not shown)"
            ) from None
        value = text.strip()
        if not value:
            raise ConfigError(f"{file_key}: the file it names is empty")
        return Secret(value)
    if required:
        raise ConfigError(f"missing secret {field!r}: give {env_key} or {file_key}")
    return None


# Third-party clients log what providers send back (status lines, response headers) at DEBUG or
# INFO, and a provider may echo a request header there. These loggers get a filter that masks every
# registered secret value; levels and handlers stay the application's business.
THIRD_PARTY_LOGGERS: Final = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "aiohttp.client",
    "aiosmtplib",
    "apprise",
    "urllib3.connectionpool",
)


def url_forms(value: str) -> set[str]:
    """`value` and the forms a client writes it in a URL: a key with a '/' or '+' (base64 keys have both) went
    into urllib3's request line and Apprise's "Loaded JSON URL" as `S3CR3T%2Fa%2Bb`, past a mask of `S3CR3T/a+b`."""
    return {value, quote(value, safe=""), quote(value), quote_plus(value), quote_plus(value, safe="/")}


class RedactingFilter(logging.Filter):
    """Replaces registered secret values in a record's message with '***'."""

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            # Short values would mask ordinary words; secrets this short are refused elsewhere anyway.
            self._values.update(form for v in values if len(v) >= 6 for form in url_forms(v))

    def filter(self, record: logging.LogRecord) -> bool:
        values = self._values
        if not values:
            return True
        message = record.getMessage()
        masked = message
        for value in values:
            masked = masked.replace(value, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = RedactingFilter()
_installed: set[str] = set()


def redact_in_logs(values: Iterable[str], loggers: Iterable[str] = THIRD_PARTY_LOGGERS) -> None:
    """Mask these secret values (and encodings of them the caller adds) in third-party log records."""
    _FILTER.add(values)
    with _FILTER._lock:
        for name in loggers:
            if name not in _installed:
                logging.getLogger(name).addFilter(_FILTER)
                _installed.add(name)
