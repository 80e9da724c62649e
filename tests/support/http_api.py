"""A local HTTPS API that records every request, and helpers for http.request tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web

from cloud_bridge.errors import BridgeError
from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.http import HttpIntegration
from tests.support.net import free_port

CANARY = "canary-SECRET-5f3a"


@dataclass
class Recorder:
    """A local HTTPS server that records every request and answers by path."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            {"method": request.method, "path": request.path_qs, "headers": dict(request.headers), "body": body,
             "peer": peer}
        )  # fmt: skip
        echo = json.dumps({"error": "denied", "you_sent": dict(request.headers), "body": body.decode()})
        routes: dict[str, web.StreamResponse] = {
            "/v1/redirect": web.Response(status=302, headers={"Location": "/v1/elsewhere"}),
            "/v1/busy": web.Response(status=429, headers={"Retry-After": "7"}),
            "/v1/fail": web.Response(status=503, text=echo),
            "/v1/denied": web.Response(status=401, text=echo, reason=f"Bad {request.headers.get('Authorization')}"),
            "/v1/missing": web.Response(status=404, text=echo),
            "/v1/timeout": web.Response(status=408),
            "/v1/long": web.Response(status=200, body=b"x" * 200_000),
            # Retry-After that str.isdigit() takes and float() refuses; past any sense; a date in year 9999
            "/v1/ok-odd-retry": web.Response(status=200, headers={"Retry-After": "\u00b2"}),
            "/v1/busy-odd": web.Response(status=429, headers={"Retry-After": "\u00b3"}),
            "/v1/busy-forever": web.Response(status=429, headers={"Retry-After": "9" * 400}),
            "/v1/busy-9999": web.Response(status=429, headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}),
        }
        return routes.get(
            request.path, web.json_response({"ok": True}, status=201 if request.method == "POST" else 200)
        )


class Handling(Protocol):
    """A loopback HTTPS API's handler: `handle` answers every request; `port` is set by `serve`."""

    port: int

    async def handle(self, request: web.Request) -> web.StreamResponse: ...


async def serve(recorder: Handling, cert: Path, key: Path) -> web.AppRunner:
    """`recorder.handle` answering every path and method over TLS (`cert`, `key`) on a free loopback port."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    recorder.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", recorder.port, ssl_context=context).start()
    return runner


@pytest.fixture
async def api(server_cert_files: dict[str, Path]) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    runner = await serve(recorder, server_cert_files["cert"], server_cert_files["key"])
    yield recorder
    await runner.cleanup()


def make_job(payload: dict[str, Any], intent_id: str = "i-1") -> Job:
    return Job("dev-1", "acme", intent_id, "http.request", payload, 1, {})


async def failure(integration: HttpIntegration, job: Job | None = None) -> BridgeError:
    """Run one request that must fail (GET /x unless `job`), close the integration, return the error."""
    try:
        with pytest.raises(BridgeError) as info:
            await integration.execute(job or make_job({"credential": "crm", "method": "GET", "path": "/x"}))
    finally:
        await integration.aclose()
    return info.value


def config(port: int, ca: Path, **credential: Any) -> dict[str, Any]:
    crm = {"base_urls": [f"https://127.0.0.1:{port}/v1/"], "methods": ["GET", "POST"], "token_env": "CRM_TOKEN"}
    crm.update(credential)
    return {"allow_private_hosts": ["127.0.0.1"], "ca_file": str(ca), "credentials": {"crm": crm}}


ENV = {"CRM_TOKEN": CANARY, "CRM_PASSWORD": CANARY}


class RotatingApi:
    """An HTTPS API (own loop thread) that takes one bearer token at a time and records every request.

    Before `switch(new)` it accepts only the first token, after it only the new one (401 otherwise).
    With `hold_after=n` it answers the first n accepted requests and then holds every further request
    until the switch, which answers the held ones by the new rule: the rotation lands on requests in
    flight, whatever the machine's speed.
    """

    def __init__(self, token: str, cert: Path, key: Path, *, hold_after: int | None = None) -> None:
        self.port = free_port()
        self.token = token
        self.hold_after = hold_after
        self.log: list[tuple[str, str, int]] = []  # (intent id, token, status) in arrival order
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rotating-api", daemon=True)
        self._switched: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._cert, self._key = cert, key
        self.held = 0  # requests that waited for the switch

    def start(self) -> RotatingApi:
        self._thread.start()

        async def start() -> None:
            self._switched = asyncio.Event()
            app = web.Application()
            app.router.add_post("/v1/items/{intent}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._cert), str(self._key))
            await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(15)
        return self

    def _accepted(self) -> int:
        return sum(1 for _, _, status in self.log if status == 200)

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._switched is not None
        if self.hold_after is not None and not self._switched.is_set():
            with self._lock:
                full = self._accepted() >= self.hold_after
            if full:
                with self._lock:
                    self.held += 1
                await self._switched.wait()
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        status = 200 if token == self.token else 401
        with self._lock:
            self.log.append((request.match_info["intent"], token, status))
        return web.json_response({"ok": status == 200}, status=status)

    def switch(self, token: str) -> None:
        """From now on accept only `token`; held requests are answered by that rule."""

        async def switch() -> None:
            assert self._switched is not None
            self.token = token
            self._switched.set()

        asyncio.run_coroutine_threadsafe(switch(), self._loop).result(15)

    def requests(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self.log)

    def close(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _tls_serving(answer: Answer, clients: set[asyncio.StreamWriter], cert: Path, key: Path) -> AsyncIterator[int]:
    """`answer` serving TLS connections on a free port (yielded); the `clients` it records are aborted at the end."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port, ssl=context)
    try:
        yield port
    finally:
        server.close()
        for client in clients:
            client.transport.abort()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def late_answer_server(
    cert: Path, key: Path, head_after: float, body_after: float, body: bytes
) -> AsyncIterator[int]:
    """An HTTPS server (on a free port, yielded) that answers any request 201: its head's bytes one every 0.1 s
    until `head_after` seconds have passed (each wait for bytes short), then `body` after `body_after` more."""

    clients: set[asyncio.StreamWriter] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.add(writer)
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            loop = asyncio.get_running_loop()
            head_at = loop.time() + head_after
            writer.write(b"HTTP/1.1 201 Created\r\nX-Slow: ")
            while loop.time() < head_at:
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"x")
            writer.write(b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
            await writer.drain()
            await asyncio.sleep(body_after)
            writer.write(body)
            await writer.drain()
            await reader.read()
        writer.close()

    async with _tls_serving(answer, clients, cert, key) as port:
        yield port


@contextlib.asynccontextmanager
async def trickling_server(cert: Path, key: Path, interval: float = 0.05) -> AsyncIterator[int]:
    """An HTTPS server (on a free port, yielded) that answers any request with a status line and then one
    byte of a header every `interval`, for ever: each wait for bytes is short, the answer never ends."""

    clients: set[asyncio.StreamWriter] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.add(writer)
        with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while True:
                await writer.drain()
                await asyncio.sleep(interval)
                writer.write(b"x")
        writer.close()

    async with _tls_serving(answer, clients, cert, key) as port:
        yield port
