"""email.send while the reverse lookup of the bridge's own name does not answer: the relay still gets the mail."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.smtp import SmtpIntegration
from tests.support.net import free_port, sockets_closed, until
from tests.support.smtp import TrackingController

FQDN = "bridge-7.example.net"


class SilentReverseDns:
    """socket.gethostbyaddr as glibc behaves when the name server does not answer: it blocks (here until
    released), then answers `FQDN`. Counts the lookups and those still blocked."""

    def __init__(self) -> None:
        self.calls = 0
        self.blocked = 0
        self.released = threading.Event()
        self._lock = threading.Lock()

    def gethostbyaddr(self, name: str) -> tuple[str, list[str], list[str]]:
        with self._lock:
            self.calls += 1
            self.blocked += 1
        try:
            self.released.wait()
        finally:
            with self._lock:
                self.blocked -= 1
        return FQDN, [], ["192.0.2.7"]


@dataclass
class GreetingSink:
    """Records the name each message's client greeted with (EHLO)."""

    greetings: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.greetings.append(str(session.host_name))
        return "250 2.0.0 queued"


def job(intent_id: str) -> Job:
    payload = {"to": ["ops@example.com"], "subject": "Alarm", "text": "Boiler 3 hot"}
    return Job("dev-1", "acme", intent_id, "email.send", payload, 1, {"from": "alerts@acme.example"})


async def test_a_reverse_lookup_that_does_not_answer_does_not_stop_email(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiosmtplib looked up the machine's FQDN (socket.getfqdn) for every message, outside its timeout: while
    reverse DNS did not answer, every email to a relay that was up ended smtp_connection at the message's bound
    (three timeouts) and was retried, its socket left open. Now the FQDN is looked up once, in a thread of its
    own, and the host name greets the relay until it is in."""
    sink, port = GreetingSink(), free_port()
    controller = TrackingController(sink, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    controller.start()
    dns = SilentReverseDns()
    monkeypatch.setattr(socket, "gethostbyaddr", dns.gethostbyaddr)
    try:
        smtp = SmtpIntegration.from_config({"host": "127.0.0.1", "port": port, "security": "none", "timeout": 0.5}, {})
        for intent_id in ("i-1", "i-2"):
            assert (await smtp.execute(job(intent_id))).detail == "2.0.0 queued"
        assert sink.greetings == [socket.gethostname()] * 2
        assert dns.calls == 1  # once, not per message
        dns.released.set()
        await until(lambda: dns.blocked == 0, what="the lookup's thread ended")
        await until(lambda: smtp.__dict__["_name"].fqdn == FQDN, what="the FQDN known")
        await smtp.execute(job("i-3"))
        assert sink.greetings[-1] == FQDN
        assert dns.calls == 1
        await sockets_closed(port)
    finally:
        dns.released.set()
        controller.stop()
