"""Errors raised by the contract codecs; the packages map them to their own families."""

from __future__ import annotations


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
