"""The dashboard when its store fails: PostgreSQL out of reach through a proxy the test controls
(`tests.support.pg_proxy`; the shared server is never stopped), seen by an operator in a real headless Chromium."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from cloud_bridge.dashboard.auth import COOKIE
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, counting, make_settings, running_bridge
from tests.support.browser import chromium, log_in
from tests.support.dashboard import PASSWORD, operator_hashes, session
from tests.support.net import until
from tests.support.pg_proxy import PgProxy, pg_proxy
from tests.support.raw_http import raw_request
from tests.support.stores import pg_url

__all__ = ["counting", "operator_hashes", "pg_url"]  # fixtures
pytestmark = pytest.mark.timeout(120)
PAGES = ("/ui/", "/ui/devices/dev-1", "/ui/intents", "/ui/usage")


@pytest.fixture
async def proxied_bridge(
    tmp_path: Path,
    server_cert_files: dict[str, Path],
    operator_hashes: dict[str, str],
    pg_url: StoreUrl,
    counting: CountingIntegration,
) -> AsyncIterator[tuple[Harness, PgProxy]]:
    """A bridge with a dashboard whose PostgreSQL store is reached through a proxy; the store's calls give up
    after 2 s."""
    with pg_proxy() as proxy:
        settings = make_settings(
            tmp_path, server_cert_files, store=proxy.url(pg_url), bridge={"store_timeout": "2s"},
            dashboard={"operators": operator_hashes, "session_key_env": "KEY"}, env={"KEY": "s" * 40},
        )  # fmt: skip
        async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
            try:
                yield harness, proxy
            finally:
                proxy.accept()  # the bridge stops with its store in reach


async def test_a_store_out_of_reach_is_a_page_that_says_so(
    proxied_bridge: tuple[Harness, PgProxy], server_cert_files: dict[str, Path]
) -> None:
    """Every page answered the enrollment API's JSON (`{"error": "store_unavailable", ... "(an enrollment: with the
    same code)"}`), without the dashboard's security headers; now a 503 page of the dashboard says what is wrong."""
    bridge, proxy = proxied_bridge
    cookie = ("Cookie", f"{COOKIE}={await session(bridge)}".encode())
    proxy.refuse()
    proxy.cut()
    answers = {path: await raw_request(bridge, "GET", path, [cookie]) for path in PAGES}

    for path, (status, response) in answers.items():
        head, body = response.split(b"\r\n\r\n", 1)
        assert status == 503, (path, status)
        assert b"Content-Type: text/html" in head and b"Retry-After: " in head, (path, head)
        for header in (b"X-Frame-Options: DENY", b"Content-Security-Policy: default-src 'none';",
                       b"Cache-Control: no-store"):  # fmt: skip
            assert header in head, (path, header)
        assert b"The bridge cannot reach its store" in body and b"enrollment" not in body, (path, body)

    def browse() -> str:
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, bridge.base_url, PASSWORD)  # the login needs no store; the fleet page after it does
            return str(driver.find_element(By.ID, "error").text)

    shown = await asyncio.to_thread(browse)
    assert shown.startswith("The bridge cannot reach its store"), shown
    proxy.accept()

    async def fleet_again() -> bool:
        return (await raw_request(bridge, "GET", "/ui/", [cookie]))[0] == 200

    await until(fleet_again, what="the fleet page once the store is back")
