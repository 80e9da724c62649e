"""Device-given email addresses through the real policy and the SMTP integration to an aiosmtpd relay:
what the relay gets is only what policy allowed (envelope recipients) and only the headers the bridge
set (no header injection by folding)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloud_bridge.errors import PermanentError
from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.smtp import Security, SmtpIntegration
from cloud_bridge.policy import DeviceRef, PolicyEngine
from tests.support.net import free_port
from tests.support.smtp import TrackingController

ALLOWED_DOMAIN = "ok.com"
SENDER = "alerts@ok.com"
ENGINE = PolicyEngine.from_config(
    {"acme": {"policy": {"kinds": ["email.send"], "email_domains": [ALLOWED_DOMAIN], "email_from": SENDER}}}
)
DEVICE = DeviceRef("dev-1", "acme", "boiler-7")

# Pieces that the email package and aiosmtplib read specially, beside harmless ones.
TOKENS = ["x", "ops", ".", "@", "ok.com", "OK.com", "evil.com", ")", "(", ";", ":", "<", ">", '"', ",", "\\", "[",
          "]", "é", "¤", "=?", "?=", "From:", "Bcc:", " ", "+", "-", "x" * 17]  # fmt: skip
_part = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6).map("".join)
ADDRESS = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", _part, _part),
    st.sampled_from(["ops@ok.com", "a.b+c@OK.com", "x@evil.com", "x@ok.com.evil.com"]),
    st.emails(),
)
ADDRESSES = st.lists(ADDRESS, min_size=1, max_size=3)


@dataclass
class Relay:
    """Records every SMTP session (EHLO), every RCPT TO it accepted and every message."""

    sessions: int = 0
    rcpts: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self._lock:
            self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        with self._lock:
            self.rcpts.append(address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(bytes(envelope.content))
        return "250 2.0.0 queued"


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[Relay, int]]:
    sink, port = Relay(), free_port()
    controller = TrackingController(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def send(port: int, payload: dict[str, Any]) -> str:
    """Policy, then (if allowed) the integration: 'refused: CODE', 'failed: CODE' or 'sent'."""
    decision = ENGINE.check(DEVICE, "email.send", payload)
    if not decision.allowed:
        return f"refused: {decision.code}"
    smtp = SmtpIntegration(host="127.0.0.1", port=port, security=Security.NONE, timeout=10)
    job = Job("dev-1", "acme", "i-1", "email.send", payload, 1, dict(decision.overrides))
    try:
        asyncio.run(smtp.execute(job))
    except PermanentError as exc:
        return f"failed: {exc.code}"
    return "sent"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(to=ADDRESSES, cc=st.lists(ADDRESS, max_size=2), bcc=st.lists(ADDRESS, max_size=2))
@example(to=["root)@ok.com", "postmaster;@ok.com"], cc=[], bcc=[])
@example(to=["é>@ok.com"], cc=[], bcc=[])
@example(to=["ops@ok.com"], cc=["x(@ok.com"], bcc=['a"@ok.com'])
def test_rcpt_to_carries_only_addresses_policy_allowed(
    relay: tuple[Relay, int], to: list[str], cc: list[str], bcc: list[str]
) -> None:
    sink, port = relay
    payload: dict[str, Any] = {"to": to, "subject": "s", "text": "t"}
    payload |= {"cc": cc} if cc else {}
    payload |= {"bcc": bcc} if bcc else {}
    before_sessions, before = sink.sessions, len(sink.rcpts)
    result = send(port, payload)
    got = sink.rcpts[before:]
    if result != "sent":
        # A refused address is refused before SMTP: no session at all.
        assert result == "refused: policy_recipient", result
        assert sink.sessions == before_sessions
        return
    # each as the device wrote it, nothing reinterpreted, once however often it was listed
    assert sorted(got) == sorted({*to, *cc, *bcc})
    assert all(address.rpartition("@")[2].lower() == ALLOWED_DOMAIN for address in got), got


# The value the security test found: a group whose name needs an encoded word, which CPython 3.11 folds
# onto a line of its own with no leading whitespace, so the relay read "From:ceo@evil..." as a header.
INJECTING_REPLY_TO = "x" * 39 + "=?:From:ceo@evil.com\u00e9,"
OWN = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version", "content-type",
       "content-transfer-encoding"}  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(to=ADDRESSES, cc=st.lists(ADDRESS, max_size=2), reply_to=st.one_of(st.none(), ADDRESS))
@example(to=["ops@ok.com"], cc=[], reply_to=INJECTING_REPLY_TO)
@example(to=["ops@ok.com"], cc=[], reply_to="x@[")
@example(to=["¤:From:ceo@ok.com", 17 * "x" + "é@ok.com"], cc=[], reply_to=None)
@example(to=["ops@ok.com"], cc=["é:Bcc:spy@ok.com"], reply_to="desk@ok.com")
def test_the_relay_sees_only_the_headers_the_bridge_set(
    relay: tuple[Relay, int], to: list[str], cc: list[str], reply_to: str | None
) -> None:
    sink, port = relay
    payload: dict[str, Any] = {"to": to, "subject": "s", "text": "t"}
    payload |= {"cc": cc} if cc else {}
    payload |= {"reply_to": reply_to} if reply_to is not None else {}
    before_sessions, before = sink.sessions, len(sink.messages)
    result = send(port, payload)
    if result != "sent":
        assert result == "refused: policy_recipient", result  # by policy, before any SMTP session
        assert sink.sessions == before_sessions
        return
    (raw,) = sink.messages[before:]
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    starts = [line.partition(b":")[0].decode().lower() for line in head if line[:1] not in (b" ", b"\t")]
    assert sorted(starts) == sorted(OWN - ({"cc"} if not cc else set()) - ({"reply-to"} if reply_to is None else set()))
    parsed = email.message_from_bytes(raw, policy=email.policy.SMTP)
    assert parsed.get_all("From") == [SENDER]
    assert parsed.get_all("Reply-To") == (None if reply_to is None else [reply_to])
