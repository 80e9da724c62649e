"""email.send against a real aiosmtpd server: plain, STARTTLS and implicit TLS with trustme, AUTH, errors."""

from __future__ import annotations

import asyncio
import email
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from cloud_bridge.errors import BridgeError, ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.smtp import SmtpIntegration, message_id
from tests.support.net import free_port, sockets_closed
from tests.support.smtp import TrackingController

CANARY = "canary-SECRET-5f3a"
ENV = {"SMTP_PASSWORD": CANARY}


@dataclass
class Sink:
    """Records messages; refuses some recipients by their local part."""

    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 2.0.0 queued as ABC123"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    if isinstance(data, LoginPassword) and data.login == b"apikey" and data.password == CANARY.encode():
        return AuthResult(success=True)
    # A careless server that echoes what it was given.
    return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad credentials {data!r}")


@dataclass
class Server:
    sink: Sink
    port: int


def start(server_cert_files: dict[str, Path] | None, mode: str, **kwargs: Any) -> tuple[TrackingController, Server]:
    sink, port = Sink(), free_port()
    if server_cert_files is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(server_cert_files["cert"]), str(server_cert_files["key"]))
        kwargs["tls_context" if mode == "starttls" else "ssl_context"] = context
    controller = TrackingController(sink, hostname="127.0.0.1", port=port, server_hostname="127.0.0.1", **kwargs)
    controller.start()
    return controller, Server(sink, port)


@pytest.fixture
async def plain() -> AsyncIterator[Server]:
    controller, server = start(None, "none")
    yield server
    await sockets_closed(server.port)
    controller.stop()


@pytest.fixture
async def starttls_auth(server_cert_files: dict[str, Path]) -> AsyncIterator[Server]:
    controller, server = start(
        server_cert_files, "starttls", require_starttls=True, auth_required=True, authenticator=authenticator
    )
    yield server
    await sockets_closed(server.port)
    controller.stop()


def job(payload: dict[str, Any], sender: str = "alerts@acme.example", intent_id: str = "i-1") -> Job:
    return Job("dev-1", "acme", intent_id, "email.send", payload, 1, {"from": sender})


MAIL = {"to": ["ops@example.com"], "cc": "boss@example.com", "bcc": ["audit@example.com"], "subject": "Alarm",
        "text": "Boiler 3 hot", "html": "<b>Boiler 3 hot</b>", "reply_to": "desk@example.com"}  # fmt: skip


async def test_plain_delivery_with_stable_message_id(plain: Server) -> None:
    smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": plain.port, "security": "none"}, {})
    first = job(MAIL)
    outcome = await smtp.execute(first)
    await smtp.execute(first)  # a resend of the same attempt
    assert "queued as ABC123" in outcome.detail
    (sender, rcpts, msg), (_, _, again) = plain.sink.messages
    assert sender == "alerts@acme.example"
    assert rcpts == ["ops@example.com", "boss@example.com", "audit@example.com"]
    assert msg["From"] == "alerts@acme.example"
    assert msg["Bcc"] is None
    assert msg["Reply-To"] == "desk@example.com"
    assert msg["Message-ID"] == again["Message-ID"] == message_id(first.idempotency_key)
    assert msg.is_multipart()
    other = job(MAIL, intent_id="i-2")
    await smtp.execute(other)
    assert plain.sink.messages[2][2]["Message-ID"] != msg["Message-ID"]


async def test_starttls_with_auth(starttls_auth: Server, server_cert_files: dict[str, Path]) -> None:
    section = {"host": "127.0.0.1", "port": starttls_auth.port, "security": "starttls", "username": "apikey",
               "password_env": "SMTP_PASSWORD", "ca_file": str(server_cert_files["ca"])}  # fmt: skip
    smtp = SmtpIntegration.from_config(section, ENV)
    await smtp.execute(job({"to": "ops@example.com", "subject": "s", "text": "t"}))
    assert len(starttls_auth.sink.messages) == 1


async def test_implicit_tls(server_cert_files: dict[str, Path]) -> None:
    controller, server = start(server_cert_files, "tls")
    try:
        section = {"host": "127.0.0.1", "port": server.port, "security": "tls", "ca_file": str(server_cert_files["ca"])}
        await SmtpIntegration.from_config(section, {}).execute(
            job({"to": "a@example.com", "subject": "s", "html": "h"})
        )
        await sockets_closed(server.port)
    finally:
        controller.stop()
    assert server.sink.messages[0][2].get_content_type() == "text/html"


async def test_untrusted_certificate_is_refused(starttls_auth: Server) -> None:
    section = {"host": "127.0.0.1", "port": starttls_auth.port, "username": "apikey", "password_env": "SMTP_PASSWORD"}
    with pytest.raises(TransientError) as info:
        await SmtpIntegration.from_config(section, ENV).execute(job(MAIL))
    assert info.value.code == "smtp_connection"
    assert starttls_auth.sink.messages == []


async def test_a_refused_password_is_retried_and_never_echoed(
    starttls_auth: Server, server_cert_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A relay refusing the bridge's AUTH (535) refuses its credential, not the message: it was a permanent
    smtp_535, so a relay that switched to a new password before the bridge reloaded failed every email."""
    caplog.set_level(logging.DEBUG)
    section = {"host": "127.0.0.1", "port": starttls_auth.port, "username": "apikey",
               "password_env": "SMTP_PASSWORD", "ca_file": str(server_cert_files["ca"])}  # fmt: skip
    smtp = SmtpIntegration.from_config(section, {"SMTP_PASSWORD": CANARY + "-wrong"})
    with pytest.raises(TransientError) as info:
        await smtp.execute(job(MAIL))
    assert info.value.code == "smtp_535"
    assert starttls_auth.sink.messages == []
    good = SmtpIntegration.from_config(section, ENV)
    outcome = await good.execute(job(MAIL))
    for text in (str(info.value), repr(info.value), info.value.detail, repr(outcome), repr(smtp.__dict__), caplog.text):
        assert CANARY not in text


async def test_refusals(plain: Server) -> None:
    smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": plain.port, "security": "none"}, {})
    with pytest.raises(PermanentError) as permanent:
        await smtp.execute(job({"to": "bounce@example.com", "subject": "s", "text": "t"}))
    assert permanent.value.code == "smtp_550"
    with pytest.raises(TransientError) as transient:
        await smtp.execute(job({"to": "later@example.com", "subject": "s", "text": "t"}))
    assert transient.value.code == "smtp_451"
    partly = await smtp.execute(job({"to": ["ops@example.com", "bounce@example.com"], "subject": "s", "text": "t"}))
    assert "1 recipients refused" in partly.detail
    assert [m[1] for m in plain.sink.messages] == [["ops@example.com"]]


@dataclass
class Latin1Sink(Sink):
    """A relay that answers in Latin-1, as relays that do not speak UTF-8 do; refuses the data of `Subject: x`."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> Any:
        if b"Subject: x" in envelope.content:
            return "554 Inhalt ung\u00fcltig".encode("latin-1")
        await super().handle_DATA(server, session, envelope)
        return "250 Nachricht \u00fcbernommen".encode("latin-1")


async def test_a_relays_latin1_reply_is_read_as_written() -> None:
    """aiosmtplib keeps bytes that are not UTF-8 as lone surrogates: the detail said `\\udcfcbernommen`."""
    controller = TrackingController(Latin1Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": controller.port, "security": "none"}, {})
        outcome = await smtp.execute(job({"to": "ops@example.com", "subject": "s", "text": "t"}))
        with pytest.raises(PermanentError) as info:
            await smtp.execute(job({"to": "ops@example.com", "subject": "x", "text": "t"}))
        await sockets_closed(controller.port)
    finally:
        controller.stop()
    assert outcome.detail == "Nachricht \u00fcbernommen"
    assert (info.value.code, info.value.detail) == ("smtp_554", "SMTP 554 Inhalt ung\u00fcltig")


async def test_connection_refused_is_transient() -> None:
    smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": free_port(), "security": "none", "timeout": 5}, {})
    with pytest.raises(TransientError) as info:
        await smtp.execute(job(MAIL))
    assert info.value.code == "smtp_connection"


@dataclass
class SlowSink(Sink):
    """Answers every recipient after `delay`: each reply within the timeout, the message not."""

    delay: float = 0.1

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_RCPT(server, session, envelope, address, options)


async def test_a_relay_answering_each_reply_in_time_cannot_hold_a_message() -> None:
    """aiosmtplib's timeout bounds each reply; with 300 recipients a relay answering each in time held one
    email (and its executor slot) for 300 timeouts. The whole message is bounded too."""
    sink, port = SlowSink(), free_port()
    controller = TrackingController(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": port, "security": "none", "timeout": 0.3}, {})
        many = [f"ops{i}@example.com" for i in range(100)]
        with pytest.raises(TransientError) as info:
            await smtp.execute(job({"to": many, "cc": many, "bcc": many, "subject": "s", "text": "t"}))
        assert info.value.code == "smtp_connection"
        assert sink.messages == []
        await sockets_closed(port)
    finally:
        controller.stop()


@dataclass
class LateQuitSink(Sink):
    """Answers EHLO, MAIL, each RCPT and the data after `delay` each, then does not answer QUIT."""

    delay: float = 0.5

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        await asyncio.sleep(self.delay)
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        await asyncio.sleep(self.delay)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(4 * self.delay)
        return "221 Bye"


async def test_the_message_bound_ends_with_the_relays_answer_not_at_quit() -> None:
    """The relay has the message once it answers the data; a QUIT that stalls past the message's bound (three
    timeouts) must not make a sent message an error, which the executor would send again."""
    sink, port = LateQuitSink(), free_port()
    controller = TrackingController(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": port, "security": "none", "timeout": 1}, {})
        # about 2.5 s to the answer to the data (under the 3 s bound), QUIT unanswered past it
        outcome = await smtp.execute(job({"to": ["ops@example.com", "desk@example.com"], "subject": "s", "text": "t"}))
        assert outcome.detail == "2.0.0 queued as ABC123"
        assert [m[1] for m in sink.messages] == [["ops@example.com", "desk@example.com"]]
        await sockets_closed(port)
    finally:
        controller.stop()


async def test_header_injection_and_missing_from_are_permanent(plain: Server) -> None:
    smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": plain.port, "security": "none"}, {})
    with pytest.raises(PermanentError) as injected:
        await smtp.execute(job({"to": "ops@example.com", "subject": "hi\r\nBcc: x@evil.com", "text": "t"}))
    assert injected.value.code == "bad_message"
    with pytest.raises(BridgeError) as no_from:
        await smtp.execute(Job("d", "t", "i", "email.send", MAIL, 1, {}))
    assert no_from.value.code == "policy_from"
    assert plain.sink.messages == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Alarm\x00Bcc: x@evil.example"),
        ("subject", "Alarm\tnow"),
        ("subject", "Alarm\x85"),
        ("subject", "Alarm\u2028Bcc: x@evil.example"),
        ("reply_to", "desk@example.com\x01"),
        ("to", ["ops@example.com", "x\x00@example.com"]),
        ("bcc", "audit@example.com\x7f"),
        # Addresses that broke the libraries: a permanent refusal, not an unhandled error the executor retried
        ("reply_to", "x@["),  # an AttributeError inside the email package
        ("to", "a<@example.com"),  # a ValueError inside aiosmtplib at RCPT
    ],
)
async def test_header_fields_that_cannot_be_sent_are_refused(plain: Server, field: str, value: object) -> None:
    smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": plain.port, "security": "none"}, {})
    with pytest.raises(PermanentError) as info:
        await smtp.execute(job({**MAIL, field: value}))
    assert info.value.code == "bad_message"
    assert plain.sink.messages == []


@pytest.mark.parametrize(
    "section",
    [
        {"port": 25},
        {"host": "h", "security": "ssl"},
        {"host": "h", "username": "u", "password": CANARY},
        {"host": "h", "username": "u"},
        {"host": "h", "port": 0},
        {"host": "h", "hostname": "typo"},
        # getaddrinfo took 70000 and connected to port 4464; a port or scheme in `host` failed every email
        {"host": "h", "port": 70000},
        {"host": "smtp.example.com:587"},
        {"host": "smtps://smtp.example.com"},
        {"host": "smtp.example.com "},
        # the client waited for a greeting while the relay waited for a TLS hello, or the reverse, at every email
        {"host": "h", "port": 465},
        {"host": "h", "port": 465, "security": "none"},
        {"host": "h", "port": 587, "security": "tls"},
    ],
)
def test_bad_config(section: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        SmtpIntegration.from_config(section, ENV)
    assert CANARY not in str(info.value)
