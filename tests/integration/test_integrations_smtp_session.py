"""email.send against a relay that refuses the bridge's session (greeting, EHLO, STARTTLS) or lacks what the
config asks for (STARTTLS, AUTH): retried, saying what the relay did, never failed for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloud_bridge.errors import TransientError
from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.smtp import SmtpIntegration

SECRET = "canary-SECRET-0b9e"


@dataclass
class ScriptedRelay:
    """A relay speaking SMTP by a script: the greeting, and an answer per command (default 250); records commands."""

    script: dict[str, bytes]
    commands: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.script.get("greeting", b"220 relay.test ESMTP\r\n"))
            await writer.drain()
            while line := await reader.readline():
                verb = line.split(b" ", 1)[0].strip().upper().decode()
                self.commands.append(verb)
                if verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                writer.write(self.script.get(verb, b"250 OK\r\n"))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[ScriptedRelay]:
    scripted = ScriptedRelay(request.param)
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    try:
        yield scripted
    finally:
        server.close()
        await server.wait_closed()


MAIL = Job("dev-1", "acme", "i-1", "email.send", {"to": "ops@example.com", "subject": "s", "text": "t"}, 1,
           {"from": "alerts@acme.example"})  # fmt: skip
EHLO_STARTTLS = b"250-relay.test\r\n250 STARTTLS\r\n"


@pytest.mark.parametrize(
    ("relay", "security", "code", "said"),
    [
        ({"greeting": b"554 5.7.1 no SMTP service here for 127.0.0.1\r\n"}, "none", "smtp_554",
         "SMTP 554 5.7.1 no SMTP service here for 127.0.0.1: the relay refused the bridge's session"),
        ({"EHLO": b"550 5.7.1 bad name\r\n", "HELO": b"550 5.7.1 bad name\r\n"}, "none", "smtp_550",
         "SMTP 550 5.7.1 bad name: the relay refused the bridge's session"),
        ({"EHLO": EHLO_STARTTLS, "STARTTLS": b"501 5.5.4 TLS broken here\r\n"}, "starttls", "smtp_501",
         "SMTP 501 5.5.4 TLS broken here: the relay refused the bridge's session"),
        ({"EHLO": b"250 relay.test\r\n"}, "starttls", "smtp_connection",
         "SMTPException talking to 127.0.0.1:{port}: SMTP STARTTLS extension not supported by server."),
    ],
    indirect=["relay"],
)  # fmt: skip
async def test_a_refused_session_is_retried_and_says_why(
    relay: ScriptedRelay, security: str, code: str, said: str
) -> None:
    """A 5xx to the greeting, EHLO or STARTTLS refuses the bridge (its address, its name, the relay's TLS), not the
    message: it failed every email meanwhile for good (smtp_554, smtp_501 permanent), while a relay offering no
    STARTTLS was retried with `SMTPException talking to HOST` only."""
    smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": relay.port, "security": security}, {})
    with pytest.raises(TransientError) as info:
        await smtp.execute(MAIL)
    assert (info.value.code, info.value.detail) == (code, said.format(port=relay.port))
    assert "MAIL" not in relay.commands


@pytest.mark.parametrize("relay", [{"EHLO": b"250 relay.test\r\n"}], indirect=True)
async def test_a_relay_offering_no_auth_says_so_and_never_the_password(relay: ScriptedRelay) -> None:
    section: dict[str, Any] = {"host": "127.0.0.1", "port": relay.port, "security": "none", "username": "apikey",
                               "password_env": "P"}  # fmt: skip
    with pytest.raises(TransientError) as info:
        await SmtpIntegration.from_config(section, {"P": SECRET}).execute(MAIL)
    assert info.value.code == "smtp_connection"
    assert "The SMTP AUTH extension is not supported by this server" in info.value.detail
    assert SECRET not in repr(info.value.__dict__)
    assert relay.commands == ["EHLO"]
