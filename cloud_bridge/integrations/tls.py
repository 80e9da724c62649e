"""The client TLS context every integration uses: always verifying, optionally trusting one CA only."""

from __future__ import annotations

import ssl

from cloud_bridge.errors import ConfigError


def tls_context(ca_file: object) -> ssl.SSLContext:
    """A verifying client TLS context; with `ca_file`, only that CA is trusted."""
    if ca_file is not None and not isinstance(ca_file, str):
        raise ConfigError("ca_file must be a path")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        # Not the path: config problems quote no value (docs/config.md); the caller says which key.
        raise ConfigError(f"cannot load ca_file: {exc.__class__.__name__}") from None
