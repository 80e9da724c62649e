"""Errors of the cloud bridge: one root, a transient family (retry) and a permanent family (fail).

Every error raised belongs to one family; third-party exceptions are turned into these where they
enter (the CLI prints these in one line and lets anything else show its traceback: a bug).
"""

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


class NotAMailboxError(PermanentError):
    """A value that is not one plain email mailbox (cloud_bridge.mailbox); `detail` says why, without quoting it."""

    code = "bad_address"


class PolicyError(PermanentError):
    """The device's policy does not allow this intent; it ends `rejected`, never executed."""

    code = "policy"


class ConfigError(PermanentError):
    """The configuration, a flag or what they name (a file, a secret, an address to listen on) cannot be used."""

    code = "config"


class NoStoreError(ConfigError):
    """An operator's command names a store that was never made (a mistyped --data-dir or --store): nothing is read
    or made there."""

    code = "no_store"


class AuthError(PermanentError):
    """A device failed authentication or enrollment."""

    code = "auth"


class SignedTokenError(AuthError):
    """A device token whose signature verified with the key tried, refused for what it says (expired, issued in
    the future, another audience, a lifetime or claim out of bounds): that key made it, so its refusal, not a
    mismatch of another key tried before, is what the caller is told."""


class KeyReplacedError(AuthError):
    """Signed with a key the device used to have: a rotation replaced it at `replaced_at` (seconds)."""

    code = "key_replaced"

    def __init__(self, detail: str, *, replaced_at: float) -> None:
        super().__init__(detail)
        self.replaced_at = replaced_at


class UnknownDeviceError(PermanentError):
    """No device with that id."""

    code = "unknown_device"


class OfflineFileError(PermanentError):
    """A bundle or enrollment file that cannot be used: unreadable, not for this bridge, forged, too large."""

    code = "offline_file"


class LedgerStateError(PermanentError):
    """A ledger row was asked to make a move its state machine does not allow; nothing changed."""

    code = "illegal_transition"


class CallUnderWayError(LedgerStateError):
    """An operator's cancel of a running row whose provider call had started: it finishes; nothing changed."""

    code = "call_under_way"


class CancelPendingError(TransientError):
    """An operator's cancel of a running row that its node did not answer in time: the ask stays, and the row
    ends cancelled unless its call has started."""

    code = "cancel_pending"


class UnknownIntentError(PermanentError):
    """No ledger row with that id (for that device)."""

    code = "unknown_intent"


class RevokedDeviceError(PermanentError):
    """An operation that would run a revoked device's intent again (an operator's retry); nothing changed."""

    code = "device_revoked"


class BadOperatorError(PermanentError):
    """An operator name that is not a valid name."""

    code = "bad_operator"


class AmbiguousIntentError(PermanentError):
    """An intent id given without its device names rows of several devices."""

    code = "ambiguous_intent"


class SchemaError(ConfigError):
    """The database's schema is not one this bridge can run on (too new, or needs `db upgrade`)."""

    code = "schema_version"
