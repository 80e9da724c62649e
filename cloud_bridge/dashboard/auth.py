"""Operators of the dashboard: password login, signed session cookies, CSRF tokens. Pure, clock injected.

A session is `base64(user:expiry).hmac`: nothing is stored server-side, so any bridge node with the
same key accepts it (docs/dashboard.md). The key comes from the config's secret (env or file), or is
made at start for one node. A form's CSRF token is an HMAC of the session, so a page from another
origin cannot produce it; the cookie is also SameSite=Strict, and POSTs must come from our origin.
Cookies and tokens are ours only when ASCII (base64, hex): anything else is refused before it is compared
(hmac.compare_digest raises TypeError on non-ASCII text).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from intent_contract.names import is_name
from intent_contract.passwords import UNUSABLE_HASH, check_login

SESSION_S = 12 * 3600.0
COOKIE = "__Host-bridge_dashboard"  # __Host-: Secure, Path=/, no Domain: only ever this origin


@dataclass(frozen=True, slots=True)
class Operator:
    name: str


class OperatorAuth:
    """Who may log in (name -> scrypt hash) and the key that signs their sessions."""

    def __init__(self, users: Mapping[str, str], key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the session key must be at least 32 bytes")
        for name in users:
            if not is_name(name):
                raise ValueError(f"operator name {name!r} must be a valid name")
        self._users = dict(users)
        self._key = key

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check_password(self, name: str, password: str) -> bool:
        """True for a known operator with that password (slow on purpose: scrypt; an unknown name costs the
        same: `check_login`)."""
        return check_login(self._users, name, password)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _sign_session(self, body: str, name: str) -> str:
        """A session's signature covers the operator's password hash too: a new password (a new hash in the
        config) ends the sessions made with the old one; they named their operator until they expired."""
        return self._sign(f"{body}\n{self._users.get(name, UNUSABLE_HASH)}")

    def session(self, name: str, now: float) -> str:
        """A cookie value for `name`, valid for SESSION_S."""
        body = base64.urlsafe_b64encode(f"{name}:{int(now + SESSION_S)}".encode()).decode()
        return f"{body}.{self._sign_session(body, name)}"

    def operator(self, cookie: str | None, now: float) -> Operator | None:
        """The operator a cookie names, if it is ours, unexpired, and the operator still exists with the password
        the session was made under."""
        if not cookie or not cookie.isascii() or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        try:
            name, _, expiry = base64.urlsafe_b64decode(body.encode()).decode().rpartition(":")
            expires = int(expiry)
        except ValueError:  # not base64 (binascii.Error), not UTF-8, no number: not ours
            return None
        # Compared before anything else is judged, for every name (an unknown one against UNUSABLE_HASH).
        if not hmac.compare_digest(signature.encode(), self._sign_session(body, name).encode()):
            return None
        if expires < now or name not in self._users:
            return None
        return Operator(name)

    def csrf_token(self, cookie: str) -> str:
        """The token every form of this session carries."""
        return self._sign("csrf:" + cookie)

    def csrf_ok(self, cookie: str | None, token: str | None) -> bool:
        """True when `token` is this session's; a missing or non-ASCII cookie or token is never."""
        if not cookie or not token or not cookie.isascii() or not token.isascii():
            return False
        return hmac.compare_digest(self.csrf_token(cookie).encode(), token.encode())
