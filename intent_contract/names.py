"""Names used for apps, intent ids, devices, credentials and targets."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)

# The one list of intent kinds; schemas/ has a file per kind and envelope.json names them again, both
# held equal to this by tests/unit/test_schemas.py.
KINDS: tuple[str, ...] = ("email.send", "sms.send", "http.request", "notify")


def is_name(value: object) -> bool:
    """True when `value` is a string that is a valid app, id or device name."""
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None
