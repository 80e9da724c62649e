"""What an email address from a device may be: one plain ASCII mailbox, `local@domain`, nothing else.

Policy decides on the parsed address and the SMTP integration sends that same address, so the domain
policy allowed is the one that reaches the envelope and the headers. Anything the email package or
aiosmtplib would read differently from the string (a display name, a group "x:", a comment, quoting, a
route "<...>", an encoded word, a domain literal, non-ASCII, which CPython folds into header lines of
their own) is not a mailbox here. The email.send schema holds the same `PATTERN` (a test keeps them
equal), so most such intents are refused at the edge already; the bridge never relies on that.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from typing import Final

from cloud_bridge.errors import NotAMailboxError

# RFC 5322 dot-atom of atext (ASCII only) @ dot-separated letters, digits and hyphens. No whitespace,
# control characters, or any of ( ) < > [ ] : ; @ \ , " and no empty or trailing dot-separated part.
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL: Final = r"[A-Za-z0-9-]"
PATTERN: Final = rf"^{_ATEXT}+(\.{_ATEXT}+)*@{_LABEL}+(\.{_LABEL}+)*$"
MAX_LENGTH: Final = 254
_MAILBOX: Final = re.compile(PATTERN)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One plain mailbox, as parsed; `str()` is exactly the string it was parsed from."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    def header(self) -> Address:
        """For an address header: built from the parts, never reparsed from device text."""
        return Address(username=self.local, domain=self.domain)


def parse_mailbox(value: object) -> Mailbox:
    """`value` as one plain mailbox, or NotAMailboxError."""
    if not isinstance(value, str):
        raise NotAMailboxError("not a string")
    if len(value) > MAX_LENGTH:
        raise NotAMailboxError(f"longer than {MAX_LENGTH} characters")
    if _MAILBOX.fullmatch(value) is None:
        raise NotAMailboxError("not a plain local@domain address (ASCII, no name, group, comment or quoting)")
    # The same reading as the email package's (headers) and aiosmtplib's (envelope, via parseaddr), or
    # refused: an encoded word "=?...?=" in the local part passes the pattern but not the parser.
    try:
        parsed = Address(addr_spec=value)
    except (HeaderParseError, ValueError, TypeError, IndexError, AttributeError):
        raise NotAMailboxError("the email package reads it differently") from None
    if parsed.addr_spec != value or email.utils.parseaddr(value) != ("", value):
        raise NotAMailboxError("the email package reads it differently")
    return Mailbox(parsed.username, parsed.domain)


def is_mailbox(value: object) -> bool:
    """Whether `parse_mailbox` takes it."""
    try:
        parse_mailbox(value)
    except NotAMailboxError:
        return False
    return True
