"""Optional per-app logins for local clients of the embedded broker, and the topics each app may use.

The users file has one `app:hash` line per app (`#` starts a comment); `edge-outbox hash-password`
makes the hash (scrypt). With no users file, anonymous local clients may use any app name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

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


class AppAuthPlugin(BaseAuthPlugin):
    """Lets a client in when its username is a known app and the password matches, or anyone without users."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)

    async def authenticate(self, *, session: Session) -> bool | None:
        users: dict[str, str] = self.config.users
        if not users:
            return True
        stored = users.get(session.username or "")
        return stored is not None and session.password is not None and verify_password(session.password, stored)


class AppTopicPlugin(BaseTopicPlugin):
    """With logins: an app publishes only under outbox/{app}/ and subscribes only to its own statuses."""

    @dataclass
    class Config:
        enabled: bool = True

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None or not session.username:
            return False
        own = f"outbox/{session.username}/"
        if action is Action.PUBLISH:
            return topic.startswith(own) and not topic.startswith(own + "status/")
        return topic.startswith(own + "status/")
