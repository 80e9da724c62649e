"""http.request's aiohttp client against a raw local HTTP server: limits, timeouts, faults, wire form."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from cloud_bridge.errors import TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.http import Credential, HttpIntegration
from cloud_bridge.integrations.ssrf import SsrfGuard
from tests.support.http_api import CANARY, ENV, failure, make_job
from tests.support.net import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawServer:
    """Records each request head and its peer; answers `response` (None: never, until the client leaves)."""

    response: bytes | None = OK
    then_close: bool = False
    heads: list[bytes] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.heads.append(head)
                self.peers.append(writer.get_extra_info("peername"))
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        await reader.readexactly(int(value))
                if self.response is None:
                    await reader.read()  # until the client gives up and closes
                    return
                writer.write(self.response)
                await writer.drain()
                if self.then_close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running(raw: RawServer) -> AsyncIterator[RawServer]:
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()


def integration(port: int, host: str = "127.0.0.1", **kwargs: object) -> HttpIntegration:
    section = {"base_urls": [f"http://{host}:{port}/v1/"], "methods": ["GET", "POST"], "token_env": "CRM_TOKEN"}

    async def resolver(name: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    return HttpIntegration(
        {"crm": Credential.from_config("crm", section, ENV)},
        guard=SsrfGuard(["127.0.0.1"], resolver=resolver),
        context=ssl.create_default_context(),
        **kwargs,  # type: ignore[arg-type]
    )


def get(path: str = "/x", n: int = 1) -> Job:
    return make_job({"credential": "crm", "method": "GET", "path": path}, f"i-{n}")


def test_built_outside_a_running_loop() -> None:
    """from_config runs in sync code; aiohttp's session needs a loop, so it is made on first use."""
    http = integration(free_port())
    asyncio.run(http.aclose())


async def test_connections_are_capped_at_the_concurrency() -> None:
    async with running(RawServer()) as raw:
        http = integration(raw.port, concurrency=2)
        try:
            outcomes = await asyncio.gather(*(http.execute(get(n=n)) for n in range(6)))
        finally:
            await http.aclose()
    assert outcomes == [Outcome("HTTP 200")] * 6
    assert len(set(raw.peers)) == 2


async def test_a_silent_server_is_a_timeout_naming_only_class_and_host() -> None:
    async with running(RawServer(response=None)) as raw:
        http = integration(raw.port, timeout=0.2)
        try:
            with pytest.raises(TransientError) as info:
                await http.execute(get(f"/x?key={CANARY}"))
        finally:
            await http.aclose()
    assert info.value.code == "http_timeout"
    assert info.value.detail == "SocketTimeoutError talking to 127.0.0.1"
    assert info.value.__cause__ is None and info.value.__context__ is None  # aiohttp's holds the headers


async def test_nothing_listening_is_a_connection_error() -> None:
    error = await failure(integration(free_port()))
    assert isinstance(error, TransientError)
    assert error.code == "http_connection"


async def test_an_unparseable_response_is_a_connection_error() -> None:
    async with running(RawServer(response=b"SMTP ready\r\n\r\n")) as raw:
        error = await failure(integration(raw.port))
    assert isinstance(error, TransientError)
    assert error.code == "http_connection"


@pytest.mark.parametrize("size", [9_000, 60_000])
async def test_a_long_header_line_in_a_providers_answer_is_no_broken_connection(size: int) -> None:
    """aiohttp read header lines of at most 8,190 bytes: a 200 with a 9 KB policy header or cookie was
    http_connection, retried, and the request reached the provider once per try."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Security-Policy: " + b"a" * size + b"\r\nContent-Length: 2\r\n\r\nok"
    async with running(RawServer(response=answer)) as raw:
        http = integration(raw.port)
        try:
            outcome = await http.execute(make_job({"credential": "crm", "method": "POST", "path": "/x", "json": {}}))
        finally:
            await http.aclose()
    assert outcome == Outcome("HTTP 200")
    assert len(raw.heads) == 1


@pytest.mark.parametrize("then_close", [True, False])  # the server hangs up, or stalls until the timeout
async def test_a_body_cut_short_after_the_status_still_delivers(then_close: bool) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-this"
    async with running(RawServer(response=cut, then_close=then_close)) as raw:
        http = integration(raw.port, timeout=0.2)
        try:
            first = await http.execute(get())
            raw.response, raw.then_close = OK, False
            second = await http.execute(get(n=2))
        finally:
            await http.aclose()
    assert (first, second) == (Outcome("HTTP 200"), Outcome("HTTP 200"))
    assert len(set(raw.peers)) == 2  # the cut connection was not reused


async def test_path_and_query_go_out_as_given() -> None:
    """Escapes are kept (a provider may sign or route on them); non-ASCII is percent-encoded."""
    async with running(RawServer()) as raw:
        http = integration(raw.port)
        try:
            await http.execute(get("/a%41b/%7e?q=%2F&r=1+2&s=%zz&t=\u00e9"))
        finally:
            await http.aclose()
    assert raw.heads[0].split(b"\r\n")[0] == b"GET /v1/a%41b/%7e?q=%2F&r=1+2&s=%zz&t=%C3%A9 HTTP/1.1"


async def test_a_providers_cookie_is_not_sent_back() -> None:
    """One credential serves many tenants: a session cookie from one answer must not reach the next."""
    cookie = b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=tenant-a; Path=/\r\nContent-Length: 0\r\n\r\n"
    async with running(RawServer(response=cookie)) as raw:
        http = integration(raw.port, host="api.test")  # cookie jars ignore cookies from IP hosts
        try:
            for n in range(2):
                await http.execute(get(n=n))
        finally:
            await http.aclose()
    assert len(raw.heads) == 2
    assert b"cookie:" not in raw.heads[1].lower()


async def test_a_raw_body_gets_no_invented_content_type() -> None:
    async with running(RawServer()) as raw:
        http = integration(raw.port)
        try:
            job = make_job({"credential": "crm", "method": "POST", "path": "/x", "body": "a=1"})
            await http.execute(job)
        finally:
            await http.aclose()
    assert b"content-type" not in raw.heads[0].lower()
