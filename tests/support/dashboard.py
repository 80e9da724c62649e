"""A bridge with the operators' dashboard (operator alice) on free loopback ports, and an HTTP login."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from cloud_bridge.dashboard.auth import COOKIE
from intent_contract.passwords import hash_password
from tests.support.bridge import CountingIntegration, Harness, make_settings, running_bridge

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def operator_hashes() -> dict[str, str]:
    return {"alice": hash_password(PASSWORD)}


@pytest.fixture
async def dashboard_bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], operator_hashes: dict[str, str], counting: CountingIntegration
) -> AsyncIterator[Harness]:
    """A running bridge whose email.send runs `counting` (a test module imports that fixture too)."""
    settings = make_settings(
        tmp_path, server_cert_files, dashboard={"operators": operator_hashes, "session_key_env": "KEY"},
        env={"KEY": "s" * 40},
    )  # fmt: skip
    async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield harness


@dataclass(frozen=True)
class LoginAnswer:
    status: int
    headers: dict[str, str]
    session: str | None  # the session cookie's value when the login worked
    text: str


async def log_in(
    harness: Harness, user: str = "alice", password: str = PASSWORD, *, source: str = "127.0.0.1"
) -> LoginAnswer:
    """POST /ui/login from our own origin and the loopback address `source` (any of 127.0.0.0/8)."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as http,
        http.post(f"{harness.base_url}/ui/login", data={"user": user, "password": password},
                  headers={"Origin": harness.base_url}, ssl=harness.client_ssl(), allow_redirects=False) as answer,
    ):  # fmt: skip
        cookie = answer.cookies.get(COOKIE)
        text = await answer.text()
        return LoginAnswer(answer.status, dict(answer.headers), cookie.value if cookie else None, text)


async def session(harness: Harness) -> str:
    """A logged-in operator's session cookie value."""
    answer = await log_in(harness)
    assert answer.status == 303 and answer.session is not None
    return answer.session


async def overview_status(harness: Harness, cookie: str) -> int:
    """The status of GET /ui/ with the session cookie `cookie`: 200 when it is a session, 303 (to login) when not."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{harness.base_url}/ui/", ssl=harness.client_ssl(), allow_redirects=False,
                 cookies={COOKIE: cookie}) as page,
    ):  # fmt: skip
        return page.status
