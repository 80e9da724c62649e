"""Errors of the cloud bridge: one root, a transient family (retry) and a permanent family (fail)."""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every cloud bridge error. `code` is a stable snake_case word for acks and audit."""

    code = "bridge_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class TransientError(BridgeError):
    """Worth retrying later: a provider timeout, a 5xx or 429, a connection refused."""

    code = "transient"

    def __init__(self, detail: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class PermanentError(BridgeError):
    """Will fail the same way again: a 4xx, a refused recipient, a bad request."""

    code = "permanent"


class PolicyError(PermanentError):
    """The device's policy does not allow this intent; it ends `rejected`, never executed."""

    code = "policy"


class ConfigError(BridgeError):
    """The configuration file or a secret it names is missing or wrong."""

    code = "config"


class AuthError(BridgeError):
    """A device failed authentication or enrollment."""

    code = "auth"
