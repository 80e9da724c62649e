"""aiosmtpd servers for the tests: a controller that waits for its clients before it stops, and a
provider account (STARTTLS, AUTH required) that records who logged in and what it accepted."""

from __future__ import annotations

import email
import ssl
import threading
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.net import free_port, wait_until


class TrackingController(Controller):  # type: ignore[misc]
    """Counts open server connections so teardown can wait for clients to finish before stopping.

    Stopping the server thread's loop while it still holds a connection would leave that socket
    unclosed (a ResourceWarning, which is an error here).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[int] = set()

    def factory(self) -> Any:
        server = super().factory()
        made, lost = server.connection_made, server.connection_lost

        def connection_made(transport: Any) -> None:
            self.open_connections.add(id(server))  # STARTTLS calls this a second time
            made(transport)

        def connection_lost(exc: Exception | None) -> None:
            self.open_connections.discard(id(server))
            lost(exc)

        server.connection_made, server.connection_lost = connection_made, connection_lost
        return server

    def stop(self, no_assert: bool = False) -> None:
        wait_until(lambda: not self.open_connections, timeout=10, what="SMTP clients disconnected")
        super().stop(no_assert)


@dataclass
class SmtpAccount:
    """One provider account: STARTTLS, AUTH with exactly `login`/`password`; records every login tried
    (login, password) and every message accepted (the session's login, recipients, message)."""

    login: str
    password: str
    logins: list[tuple[str, str]] = field(default_factory=list)
    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    controller: TrackingController | None = None

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        tried = (data.login.decode(), data.password.decode())
        with self._lock:
            self.logins.append(tried)
        return AuthResult(success=tried == (self.login, self.password), auth_data=tried[0])

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        who = str(session.auth_data or "")
        with self._lock:
            self.messages.append((who, list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 2.0.0 queued"

    def subjects(self) -> list[str]:
        with self._lock:
            return [str(m["Subject"]) for _, _, m in self.messages]

    def start(self, server_cert_files: dict[str, Path]) -> SmtpAccount:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(server_cert_files["cert"]), str(server_cert_files["key"]))
        self.controller = TrackingController(
            self, hostname="127.0.0.1", port=free_port(), server_hostname="127.0.0.1", tls_context=context,
            require_starttls=True, auth_required=True, authenticator=self.authenticate,
        )  # fmt: skip
        self.controller.start()
        return self

    @property
    def port(self) -> int:
        assert self.controller is not None
        return int(self.controller.port)

    def section(self, ca_file: Path, password_env: str, concurrency: int = 4) -> dict[str, Any]:
        """The `[integrations.smtp]` table for this account, its password in `password_env`."""
        return {"host": "127.0.0.1", "port": self.port, "security": "starttls", "username": self.login,
                "password_env": password_env, "ca_file": str(ca_file), "concurrency": concurrency}  # fmt: skip

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
