"""Errors raised by the contract codecs; the packages map them to their own families.

All of them are permanent (the same input fails the same way again), so there is no transient family.
"""

from __future__ import annotations

from collections.abc import Sequence


class ContractError(Exception):
    """Root of every contract error."""


class DecodeError(ContractError):
    """Bytes that are not a valid message; keeps the bad input (truncated) for inspection."""

    def __init__(self, message: str, data: bytes = b"", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.data = data[:256]
        self.cause = cause


class SchemaViolationError(ContractError):
    """A document that does not match its JSON Schema; `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class UnsupportedVersionError(DecodeError):
    """A message of a wire version this side has no decoder for; `ids` are the ids still readable in it."""

    def __init__(self, version: int, supported: Sequence[int], ids: Sequence[str], data: bytes = b"") -> None:
        spoken = ", ".join(str(v) for v in supported)
        super().__init__(f"wire version {version} is not supported (this side speaks {spoken})", data)
        self.version = version
        self.ids = tuple(ids)


class MalformedPacketError(DecodeError):
    """An MQTT packet the specification calls malformed (or over the size limit); its connection is closed."""


class ProxyHeaderError(DecodeError):
    """Bytes from a balancer that do not start with a PROXY header; the connection is closed."""


class NotSealedError(DecodeError):
    """A file that is not age-encrypted at all (a receipt, a ticket, another file given for a bundle)."""


class OtherRecipientError(DecodeError):
    """An age file whole and readable, but encrypted to another key (a bundle for another bridge)."""


class SignatureError(ContractError):
    """A signed document whose signature does not verify with the key it must be checked with."""
