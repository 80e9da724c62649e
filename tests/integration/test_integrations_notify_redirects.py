"""notify against a service that answers with a redirect: to its own origin it is followed, to another it is not,
so a key Apprise sends in a header of its own never reaches another host. Apprise's json:// plugin, local servers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiohttp import web

from cloud_bridge.errors import TransientError
from cloud_bridge.integrations import requests_redirects
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.notify import NotifyIntegration
from tests.support.net import free_port


@dataclass
class Site:
    """A webhook on one loopback address: /moved redirects (307) to `elsewhere`, anything else is taken."""

    host: str
    port: int = field(default_factory=free_port)
    elsewhere: str = ""
    taken: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if request.path == "/moved":
            return web.Response(status=307, headers={"Location": self.elsewhere})
        self.taken.append({"path": request.path, "headers": dict(request.headers)})
        return web.json_response({"ok": True})


@pytest.fixture
async def sites() -> AsyncIterator[tuple[Site, Site]]:
    """The provider's site on 127.0.0.1 and another host's on 127.0.0.2."""
    own, other = Site("127.0.0.1"), Site("127.0.0.2")
    runners = []
    for site in (own, other):
        app = web.Application()
        app.router.add_post("/{tail:.*}", site.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, site.host, site.port).start()
        runners.append(runner)
    yield own, other
    for runner in runners:
        await runner.cleanup()


def notify(url: str) -> NotifyIntegration:
    return NotifyIntegration.from_config({"targets": {"oncall": {"urls_env": "U"}}}, {"U": url})


JOB = Job("dev-1", "acme", "i-1", "notify", {"target": "oncall", "body": "Boiler 3 hot"}, 1, {})


async def test_a_redirect_to_another_host_is_not_followed_with_the_key(
    sites: tuple[Site, Site], caplog: pytest.LogCaptureFixture
) -> None:
    """requests takes only Authorization off a request it sends on to another host: json://'s `+X-Api-Key` went to
    the host a 307 named (plain http included) and the notification counted as delivered."""
    caplog.set_level(logging.INFO)
    own, other = sites
    key = f"Key{os.urandom(8).hex()}"
    own.elsewhere = f"http://127.0.0.2:{other.port}/landing"
    with pytest.raises(TransientError) as info:
        await notify(f"json://127.0.0.1:{own.port}/moved?+X-Api-Key={key}").execute(JOB)
    assert other.taken == []  # the other host got nothing, key or message
    assert info.value.code == "notify_failed"
    assert "not followed" in caplog.text and "127.0.0.2" in caplog.text  # the log says why it failed
    assert key not in caplog.text


async def test_a_redirect_within_the_services_origin_is_followed(sites: tuple[Site, Site]) -> None:
    own, _ = sites
    key = f"Key{os.urandom(8).hex()}"
    own.elsewhere = f"http://127.0.0.1:{own.port}/landing"
    outcome = await notify(f"json://127.0.0.1:{own.port}/moved?+X-Api-Key={key}").execute(JOB)
    assert outcome == Outcome("notified 1 services")
    assert [(t["path"], t["headers"]["X-Api-Key"]) for t in own.taken] == [("/landing", key)]


async def test_the_guard_holds_only_inside_its_block(sites: tuple[Site, Site]) -> None:
    """What the guard touches is still there (an upgrade of requests may change it); outside its block requests
    follows redirects as it always has."""
    requests_redirects.install()
    assert requests.Session.get_redirect_target is requests_redirects._get_redirect_target
    own, other = sites
    own.elsewhere = f"http://127.0.0.2:{other.port}/landing"

    def post() -> int:
        return requests.post(f"http://127.0.0.1:{own.port}/moved", json={}, timeout=10).status_code

    def guarded() -> int:
        with requests_redirects.same_origin_redirects():
            return post()

    assert await asyncio.to_thread(guarded) == 307
    assert await asyncio.to_thread(post) == 200
    assert [t["path"] for t in other.taken] == ["/landing"]
