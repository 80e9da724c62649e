"""Errors of the edge outbox: one root, a transient family (retry) and a permanent family (give up)."""

from __future__ import annotations


class OutboxError(Exception):
    """Root of every edge outbox error; its message is one line fit for an operator."""


class TransientError(OutboxError):
    """May succeed later: the disk is full, the database is busy, the bridge is unreachable."""


class StorageError(TransientError):
    """SQLite could not commit (disk full, I/O error); nothing of the failed batch was acknowledged."""


class AttachRefusedError(TransientError):
    """The attached broker refused the connection or the subscription (bad credentials, not authorised).

    Retried with backoff: an operator may fix the broker's side without restarting the outbox."""


class AttachVersionError(AttachRefusedError):
    """The attached broker refused MQTT 5 as a 3.1.1 broker does: the outbox attaches with 3.1.1 instead."""


class PermanentError(OutboxError):
    """Will fail the same way again: bad input, an illegal transition, a bad setting."""


class IllegalTransitionError(PermanentError):
    """An event that the intent's current state does not allow; nothing was changed."""


class NotFoundError(PermanentError):
    """No intent with that id."""


class ConfigError(PermanentError):
    """A setting, flag or file that cannot be used as given."""
