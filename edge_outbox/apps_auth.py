"""Optional per-app logins for local clients of the embedded broker (the plugins are in broker.py).

The users file has one `app:hash` line per app (`#` starts a comment); `edge-outbox hash-password`
makes the hash (scrypt). With no users file, anonymous local clients may use any app name.
"""

from __future__ import annotations

__all__ = ["UNUSABLE_HASH", "hash_password", "load_users", "verify_password"]

from pathlib import Path

from edge_outbox.errors import ConfigError
from intent_contract.names import is_name
from intent_contract.passwords import UNUSABLE_HASH, hash_password, verify_password


def load_users(path: Path) -> dict[str, str]:
    """app -> hash from a users file; a malformed line is a ConfigError naming the line."""
    users: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read users file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        app, sep, stored = text.partition(":")
        if not sep or not is_name(app) or not stored.startswith("scrypt$"):
            raise ConfigError(f"{path}:{number}: expected `app:scrypt$...` (make one with edge-outbox hash-password)")
        users[app] = stored
    return users
