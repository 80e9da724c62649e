"""email.send whose every recipient the relay refuses, some for now (4xx) and some for good (5xx): the executor
over a real SqliteLedger and the real SMTP integration against aiosmtpd."""

from __future__ import annotations

import email
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.audit import AuditEvent
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.smtp import SmtpIntegration
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract.codec import Ack, AckState, Envelope
from tests.support.clocks import Clock
from tests.support.net import free_port, sockets_closed
from tests.support.smtp import TrackingController
from tests.support.stores import admit

DEV = DeviceRef("dev-1", "acme", "boiler-7")


@dataclass
class Relay:
    """Refuses `bounce@` for good (550); answers `full@` 452 (mailbox full) for its first `full_for` sessions."""

    full_for: int = 1
    rcpts: dict[str, int] = field(default_factory=dict)
    messages: list[tuple[list[str], Message]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.rcpts[address] = self.rcpts.get(address, 0) + 1
        if address.startswith("bounce@"):
            return "550 5.1.1 no such user"
        if address.startswith("full@") and self.rcpts[address] <= self.full_for:
            return "452 4.2.2 mailbox full, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 2.0.0 queued as Q1"


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relay, SmtpIntegration]]:
    sink, port = Relay(), free_port()
    controller = TrackingController(sink, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    controller.start()
    try:
        yield sink, SmtpIntegration.from_config({"host": "127.0.0.1", "port": port, "security": "none"}, {})
        await sockets_closed(port)
    finally:
        controller.stop()


async def test_a_recipient_refused_for_now_is_retried_though_another_is_refused_for_good(
    relay: tuple[Relay, SmtpIntegration], tmp_path: Path
) -> None:
    """An email to a mistyped address (550) and a mailbox that was full for a moment (452) ended `failed`/`smtp_550`
    at once: the worst code of the refusals was taken, so the mailbox that would have taken it a minute later never
    got it. A retry sends nobody a second copy (nobody took the first), so it is retried as any 4xx is."""
    sink, smtp = relay
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    clock, finals = Clock(), list[Ack]()

    async def on_final(_device_id: str, ack: Ack) -> None:
        finals.append(ack)

    executor = Executor(ledger, {"email.send": smtp}, on_final=on_final, now=clock, rand=lambda: 1.0)
    try:
        payload = {"to": ["bounce@example.com", "full@example.com"], "subject": "Alarm", "text": "Boiler 3 hot"}
        envelope = Envelope("i-1", "hvac-ui", "email.send", int(clock.t * 1000), None, 1, payload)
        await admit(ledger, DEV, [envelope], lambda _: Decision(True, overrides={"from": "a@acme.example"}), clock.t)
        assert await executor.run_due() == 1
        assert finals == []  # not ended: queued for its retry
        (retried,) = [r for r in await ledger.audit("dev-1") if r.event is AuditEvent.RETRY]
        assert retried.code == "smtp_452"
        assert retried.detail == "SMTP 452 4.2.2 mailbox full, try again later: all 2 recipients refused (1 for now)"
        clock.t += 1.0  # retry_base with the jitter at its top
        assert await executor.run_due() == 1
    finally:
        await smtp.aclose()
        await ledger.close()
    (final,) = finals
    assert (final.state, final.code) == (AckState.DELIVERED, "")
    assert "1 recipients refused" in final.detail
    assert [rcpts for rcpts, _ in sink.messages] == [["full@example.com"]]
    assert sink.rcpts == {"bounce@example.com": 2, "full@example.com": 2}
