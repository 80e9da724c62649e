"""email.send to a relay that limits the recipients of one message (Gmail's SMTP: 100), against aiosmtpd."""

from __future__ import annotations

import email
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest

from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.smtp import SmtpIntegration
from tests.support.net import free_port, sockets_closed
from tests.support.smtp import TrackingController


@dataclass
class LimitedRelay:
    """Takes at most `limit` recipients per transaction, answering the rest 452 4.5.3 (RFC 5321 4.5.3.1.10);
    refuses `bounce@` for good; answers the data of transaction number `fail_data` (from 1) 451."""

    limit: int = 100
    fail_data: int = 0
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    transactions: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 no such user"
        if len(envelope.rcpt_tos) >= self.limit:
            return "452 4.5.3 Your message has too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.transactions += 1
        if self.transactions == self.fail_data:
            return "451 4.3.0 try again later"
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return f"250 2.0.0 queued as Q{self.transactions}"


@dataclass
class Relay:
    sink: LimitedRelay
    smtp: SmtpIntegration


@pytest.fixture
async def relay(request: pytest.FixtureRequest) -> AsyncIterator[Relay]:
    sink, port = LimitedRelay(fail_data=getattr(request, "param", 0)), free_port()
    controller = TrackingController(sink, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    controller.start()
    try:
        yield Relay(sink, SmtpIntegration.from_config({"host": "127.0.0.1", "port": port, "security": "none"}, {}))
        await sockets_closed(port)
    finally:
        controller.stop()


def addresses(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}@example.com" for i in range(count)]


def job(to: list[str], cc: list[str], bcc: list[str]) -> Job:
    payload = {"to": to, "cc": cc, "bcc": bcc, "subject": "Alarm", "text": "Boiler 3 hot"}
    return Job("dev-1", "acme", "i-1", "email.send", payload, 1, {"from": "alerts@acme.example"})


async def test_recipients_past_the_relays_limit_get_the_message_in_a_further_transaction(relay: Relay) -> None:
    """The relay answered the RCPTs past its limit 452: they were counted refused and the intent ended delivered,
    so 80 of 180 recipients never got the message. They get it in a second transaction now."""
    to, cc, bcc = addresses("to", 100), addresses("cc", 50), [*addresses("bcc", 29), "bounce@example.com"]
    outcome = await relay.smtp.execute(job(to, cc, bcc))
    assert outcome.detail == "2.0.0 queued as Q1; in 2 transactions; 1 recipients refused"
    (first, message), (second, again) = relay.sink.messages
    assert (first, second) == ([*to], [*cc, *bcc[:-1]])
    assert message["Message-ID"] == again["Message-ID"]
    assert message["Bcc"] is None


@pytest.mark.parametrize("relay", [2], indirect=True)
async def test_a_later_transaction_failing_does_not_send_the_first_again(relay: Relay) -> None:
    """Once the relay took the message for some recipients an error (retried: sent again) would duplicate it."""
    to, cc = addresses("to", 100), addresses("cc", 30)
    outcome = await relay.smtp.execute(job(to, cc, []))
    assert outcome.detail == "2.0.0 queued as Q1; 30 recipients not sent (SMTPDataError)"
    assert [rcpts for rcpts, _ in relay.sink.messages] == [to]


async def test_an_address_given_twice_gets_the_message_once(relay: Relay) -> None:
    """Its first RCPT the 100th (250), its second past the limit (452): it got the message again in the next."""
    to = [*addresses("to", 99), "desk@example.com"]
    outcome = await relay.smtp.execute(job(to, [], ["desk@example.com", "audit@example.com"]))
    assert outcome.detail == "2.0.0 queued as Q1; in 2 transactions"
    assert [rcpts for rcpts, _ in relay.sink.messages] == [to, ["audit@example.com"]]
