"""Optional per-app logins for local clients of the embedded endpoint (edge_outbox.mqtt checks each CONNECT here).

The users file has one `app:hash` line per app (`#` starts a comment); `edge-outbox hash-password`
makes the hash (scrypt). With no users file, anonymous local clients may use any app name; a users file that
names no app lets no client in.
"""

from __future__ import annotations

__all__ = ["AppLogins", "hash_password", "load_users", "reload_users", "verify_password"]

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge_outbox.errors import ConfigError
from intent_contract.names import NAME_PATTERN, is_name
from intent_contract.passwords import check_login, hash_password, is_hash, verify_password

# Password checks run on a thread of their own, one at a time (as the bridge's dashboard logins do): on the
# loop's default pool a flood of CONNECTs, each a scrypt of tens of milliseconds, held every thread of it, and
# the reads of /healthz and /metrics (Store.read_aside) waited behind them.
LOGIN_THREADS = 1

log = logging.getLogger(__name__)


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
        if sep and not is_name(app):
            raise ConfigError(f"{path}:{number}: app name {app[:80]!r} must match {NAME_PATTERN[1:-1]}")
        if not sep or not stored.startswith("scrypt$"):
            raise ConfigError(f"{path}:{number}: expected `app:scrypt$...` (make one with edge-outbox hash-password)")
        if not is_hash(stored):  # it started, and the app was refused at every login as if its password were wrong
            raise ConfigError(
                f"{path}:{number}: the hash of app {app!r} is not one edge-outbox hash-password makes (cut short, or a"
                f" `$` part lost to the shell?): make it again with edge-outbox hash-password --app {app}"
            )
        users[app] = stored
    return users


class AppLogins:
    """Checks a CONNECT's app name and password against the users file (slow on purpose: scrypt)."""

    def __init__(self, users: Mapping[str, str] | None) -> None:
        """`users` None: no users file, every login is taken. An empty one refuses every login: taken as no users
        file, a file whose apps were all taken out (or not yet put in) let any client in as any app."""
        self._users = None if users is None else dict(users)
        self._warn_if_empty()
        self._checks = ThreadPoolExecutor(LOGIN_THREADS, thread_name_prefix="app-login")

    async def check(self, username: str | None, password: bytes | None) -> bool:
        """True for a known app with that password; every login without one is refused. A name that is no app
        costs the same scrypt (`check_login`): refused at once, it told anyone who could connect which apps exist."""
        if self._users is None:
            return True
        if password is None:
            return False
        text, name, users = password.decode("utf-8", "replace"), username or "", self._users
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._checks, check_login, users, name, text)
        now = self._users or {}
        return ok and now.get(name) == users.get(name)  # not removed nor changed by a reload meanwhile

    def replace(self, users: Mapping[str, str]) -> set[str]:
        """Take a users file read again (a reload); the apps removed or given another password, whose logins end."""
        old = self._users or {}
        self._users = dict(users)
        self._warn_if_empty()
        return {app for app, stored in old.items() if self._users.get(app) != stored}

    def _warn_if_empty(self) -> None:
        if self._users == {}:
            log.warning(
                "the users file names no app: every local client is refused; add a line per app"
                " (edge-outbox hash-password --app NAME) and reload edge-outbox run (SIGHUP)"
            )

    def close(self) -> None:
        """Stop taking checks; one under way ends on its own (its CONNECT is gone with the endpoint)."""
        self._checks.shutdown(wait=False, cancel_futures=True)


def reload_users(path: Path, logins: AppLogins, end_logins: Callable[[set[str]], int]) -> None:
    """SIGHUP: read the users file again; `end_logins` closes the connections of the apps it no longer lets in
    (removed, or given another password) and says how many. A file that does not read changes nothing. Before, the
    file was read only at start: an app taken out of it went on publishing until the outbox restarted."""
    try:
        users = load_users(path)
    except ConfigError as exc:
        log.error("reload: users file not taken: %s; app logins go on as before", exc)
        return
    ended = end_logins(logins.replace(users))
    log.info(
        "reloaded the users file: %d apps; closed %d connection%s of apps removed or given another password",
        len(users),
        ended,
        "" if ended == 1 else "s",
    )
