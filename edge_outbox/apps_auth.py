"""Optional per-app logins for local clients of the embedded broker (the plugins are in broker.py).

The users file has one `app:hash` line per app (`#` starts a comment); `edge-outbox hash-password`
makes the hash (scrypt). With no users file, anonymous local clients may use any app name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from edge_outbox.errors import ConfigError
from intent_contract.names import is_name

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """An scrypt hash in the form `scrypt$N$r$p$salt$hash` (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


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
