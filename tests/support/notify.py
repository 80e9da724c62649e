"""A JSON webhook for notify tests that holds its answers: the slow provider of Apprise's json:// plugin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support.net import free_port


class HeldHook:
    """A JSON webhook that sends its status and headers at once, then holds the body until released.

    Give Apprise `?rto=300` on the URL, or it stops reading after its 4 s read timeout.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.held = 0
        self.answered = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = 2
        await response.prepare(request)
        self.held += 1
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        await response.write(b"{}")
        self.answered += 1
        return response


@pytest.fixture
async def held_hook() -> AsyncIterator[HeldHook]:
    hook = HeldHook()
    app = web.Application()
    app.router.add_post("/{tail:.*}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()
    yield hook
    hook.release.set()
    await runner.cleanup()
