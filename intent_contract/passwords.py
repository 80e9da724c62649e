"""Password hashes (scrypt) for the people and apps that log in: app logins at the edge, operators of the
bridge's dashboard. Stored as `scrypt$N$r$p$salt$hash` (base64), never the password itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    """An scrypt hash in the form `scrypt$N$r$p$salt$hash` (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


# A hash no password matches (its digest is zeros), made with the same parameters as hash_password's: checking a
# name that has no hash against it costs what checking a real one does, so the time of a refusal does not
# tell whether the name exists.
UNUSABLE_HASH = f"scrypt${_N}${_R}${_P}${base64.b64encode(bytes(16)).decode()}${base64.b64encode(bytes(64)).decode()}"


def is_hash(stored: str) -> bool:
    """Whether `stored` is a whole hash in hash_password's form (one cut short in a copy matches no password)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(part.isdigit() for part in parts[1:4]):
        return False
    try:
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    return bool(salt) and len(digest) == 64


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def check_login(users: Mapping[str, str], name: str, password: str) -> bool:
    """True for a name in `users` (name -> hash) with that password. A name not there is checked against
    UNUSABLE_HASH, the same scrypt work: refused at once, it answered many times faster than a known name,
    telling anyone who could try which names exist (the dashboard's operators, the edge's apps)."""
    stored = users.get(name)
    matches = verify_password(password, stored if stored is not None else UNUSABLE_HASH)
    return stored is not None and matches
