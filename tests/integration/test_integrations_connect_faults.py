"""A connection to a provider that fails says why, for each integration: refused, certificate not trusted, a peer
that does not speak TLS, a name that does not resolve. sms.send said `ConnectError talking to HOST` for all four,
email.send `SMTPConnectError` for the TLS ones."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

from cloud_bridge.errors import TransientError
from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.integrations.sms import SmsIntegration
from cloud_bridge.integrations.smtp import SmtpIntegration
from tests.support.net import free_port
from tests.support.smtp import TrackingController

SECRET = "canary-SECRET-77c1"
UNTRUSTED = "TLS certificate not accepted (unable to get local issuer certificate)"
NOT_TLS = "TLS failed (WRONG_VERSION_NUMBER)"


class Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def other_ca_context() -> ssl.SSLContext:
    """A server context whose certificate comes from a CA the bridge does not trust."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    """Ports: nothing listening, TLS with an untrusted certificate, plain text, STARTTLS with an untrusted one."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 not a TLS server\r\n" * 4)
        await writer.drain()
        writer.close()

    async def shut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    untrusted = await asyncio.start_server(shut, "127.0.0.1", 0, ssl=other_ca_context())
    plain = await asyncio.start_server(garbage, "127.0.0.1", 0)
    starttls: Controller = TrackingController(
        Sink(), hostname="127.0.0.1", port=free_port(), tls_context=other_ca_context(), require_starttls=True
    )
    starttls.start()
    try:
        yield {
            "refused": free_port(),
            "untrusted": untrusted.sockets[0].getsockname()[1],
            "not_tls": plain.sockets[0].getsockname()[1],
            "starttls_untrusted": int(starttls.port),
        }
    finally:
        for server in (untrusted, plain):
            server.close()
            await server.wait_closed()
        starttls.stop()


def sms(host: str, port: int, ca: Path) -> tuple[Any, Job]:
    section = {"base_url": f"https://{host}:{port}", "account_sid": "AC1", "auth_token_env": "T",
               "from": "+15550000000", "ca_file": str(ca), "timeout": 5}  # fmt: skip
    job = Job("dev-1", "acme", "i-1", "sms.send", {"to": "+4915112345678", "text": "x"}, 1, {})
    return SmsIntegration.from_config(section, {"T": SECRET}), job


def http(host: str, port: int, ca: Path) -> tuple[Any, Job]:
    credential = {"base_urls": [f"https://{host}:{port}/"], "auth": "bearer", "token_env": "T"}
    section = {"allow_private_hosts": [host], "ca_file": str(ca), "timeout": 5, "credentials": {"crm": credential}}
    job = Job("dev-1", "acme", "i-1", "http.request", {"credential": "crm", "method": "GET", "path": "/x"}, 1, {})
    return HttpIntegration.from_config(section, {"T": SECRET}), job


def smtp(security: str) -> Callable[[str, int, Path], tuple[Any, Job]]:
    def make(host: str, port: int, ca: Path) -> tuple[Any, Job]:
        section = {"host": host, "port": port, "security": security, "ca_file": str(ca), "timeout": 5,
                   "username": "apikey", "password_env": "P"}  # fmt: skip
        payload = {"to": "ops@example.com", "subject": "s", "text": "t"}
        return SmtpIntegration.from_config(section, {"P": SECRET}), Job(
            "dev-1", "acme", "i-1", "email.send", payload, 1, {"from": "alerts@acme.example"}
        )

    return make


@pytest.mark.parametrize(
    ("make", "server", "code", "detail"),
    [
        (sms, "refused", "sms_connection", "ConnectError talking to 127.0.0.1: connection refused"),
        (sms, "untrusted", "sms_connection", f"ConnectError talking to 127.0.0.1: {UNTRUSTED}"),
        (sms, "not_tls", "sms_connection", f"ConnectError talking to 127.0.0.1: {NOT_TLS}"),
        (http, "refused", "http_connection", "ClientConnectorError talking to 127.0.0.1: connection refused"),
        (http, "untrusted", "http_connection", f"ClientConnectorCertificateError talking to 127.0.0.1: {UNTRUSTED}"),
        (http, "not_tls", "http_connection", f"ClientConnectorSSLError talking to 127.0.0.1: {NOT_TLS}"),
        (smtp("tls"), "refused", "smtp_connection",
         "ConnectionRefusedError talking to 127.0.0.1:{port}: connection refused"),
        (smtp("tls"), "untrusted", "smtp_connection", f"SMTPConnectError talking to 127.0.0.1:{{port}}: {UNTRUSTED}"),
        (smtp("tls"), "not_tls", "smtp_connection", f"SMTPConnectError talking to 127.0.0.1:{{port}}: {NOT_TLS}"),
        (smtp("starttls"), "starttls_untrusted", "smtp_connection",
         f"SSLCertVerificationError talking to 127.0.0.1:{{port}}: {UNTRUSTED}"),
    ],
)  # fmt: skip
async def test_a_failed_connection_says_why(
    servers: dict[str, int], server_cert_files: dict[str, Path], make: Any, server: str, code: str, detail: str
) -> None:
    port = servers[server]
    integration, job = make("127.0.0.1", port, server_cert_files["ca"])
    try:
        with pytest.raises(TransientError) as info:
            await integration.execute(job)
    finally:
        await integration.aclose()
    assert (info.value.code, info.value.detail) == (code, detail.format(port=port))
    assert SECRET not in repr(info.value.__dict__)


@pytest.mark.parametrize("make", [sms, smtp("starttls")])
async def test_a_name_that_does_not_resolve_says_so(server_cert_files: dict[str, Path], make: Any) -> None:
    """`.invalid` never resolves (RFC 6761). http.request's names go through the SSRF guard, which says so itself."""
    integration, job = make("relay.invalid", 443, server_cert_files["ca"])
    try:
        with pytest.raises(TransientError) as info:
            await integration.execute(job)
    finally:
        await integration.aclose()
    where = "relay.invalid" if make is sms else "relay.invalid:443"
    assert info.value.detail.endswith(f"talking to {where}: name not resolved")
