"""The operators' dashboard in a real headless Chromium against a real bridge: login, the fleet table,
and the gate (no session, a forged cookie, a cross-site POST, a bridge without operators)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from selenium.webdriver.common.by import By

from cloud_bridge import fleet_query
from tests.support.bridge import CountingIntegration, Harness, counting, make_settings, running_bridge
from tests.support.browser import chromium, log_in
from tests.support.dashboard import PASSWORD, dashboard_bridge, operator_hashes
from tests.support.net import until

__all__ = ["counting", "dashboard_bridge", "operator_hashes"]  # fixtures


@pytest.fixture
def bridge(dashboard_bridge: Harness) -> Harness:
    return dashboard_bridge


async def test_an_operator_logs_in_and_sees_the_fleet(bridge: Harness, server_cert_files: dict[str, Path]) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    store = bridge.bridge.store

    def connected() -> bool:  # the node's fleet desk writes what it holds at most once a second
        return any(r.connected for r in fleet_query.overview(store.registry, store.fleet, now=time.time()))

    try:
        await until(lambda: asyncio.to_thread(connected), what="the store shows the device connected")

        def browse() -> tuple[str, str, list[str]]:
            with chromium(server_cert_files["cert"]) as driver:
                log_in(driver, bridge.base_url, "wrong password")
                refused = driver.find_element(By.ID, "error").text
                log_in(driver, bridge.base_url, PASSWORD)
                rows = driver.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
                return refused, driver.current_url, [r.text for r in rows]

        refused, url, rows = await asyncio.to_thread(browse)
    finally:
        await client.stop()
    assert refused == "Unknown operator or wrong password."
    assert url.endswith("/ui/")
    (row,) = rows
    assert creds.device_id in row and "acme" in row and "connected" in row


async def test_the_gate_refuses_strangers_forgeries_and_cross_site_posts(bridge: Harness) -> None:
    base = bridge.base_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/ui/", ssl=bridge.client_ssl(), allow_redirects=False) as page:
            assert page.status == 303 and page.headers["Location"] == "/ui/login"
        forged = {"__Host-bridge_dashboard": "YWxpY2U6OTk5OTk5OTk5OQ==.00"}
        async with http.get(f"{base}/ui/", ssl=bridge.client_ssl(), allow_redirects=False, cookies=forged) as page:
            assert page.status == 303
        # A real session, then a POST without our Origin or without the token: refused.
        login = {"user": "alice", "password": PASSWORD}
        async with http.post(f"{base}/ui/login", data=login, ssl=bridge.client_ssl(), allow_redirects=False,
                             headers={"Origin": base}) as answer:  # fmt: skip
            assert answer.status == 303
            session = answer.cookies["__Host-bridge_dashboard"].value
        cookies = {"__Host-bridge_dashboard": session}
        action = f"{base}/ui/intents/dev-1/i-1/retry"
        for headers, data in (({"Origin": "https://evil.example"}, {"csrf": "x"}), ({"Origin": base}, {})):
            async with http.post(action, data=data, headers=headers, cookies=cookies, ssl=bridge.client_ssl()) as r:
                assert r.status == 403
        # The login form itself refuses a cross-site post (login CSRF).
        async with http.post(f"{base}/ui/login", data=login, ssl=bridge.client_ssl(), allow_redirects=False,
                             headers={"Origin": "https://evil.example"}) as answer:  # fmt: skip
            assert answer.status == 403
        # The intents filter takes only what can be a device, tenant, state or kind (PostgreSQL's text refuses
        # NUL: an unknown kind was a 500 there).
        for query, status in (("kind=email.send", 200), ("kind=fax", 400), ("kind=%00", 400), ("device=a%00b", 400)):
            async with http.get(f"{base}/ui/intents?{query}", ssl=bridge.client_ssl(), cookies=cookies) as page:
                assert page.status == status, query
        async with http.get(f"{base}/ui/", ssl=bridge.client_ssl(), cookies=cookies) as page:
            assert page.status == 200
            assert page.headers["X-Frame-Options"] == "DENY"
            assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none': no script


async def test_without_operators_there_is_no_dashboard(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    async for harness in running_bridge(make_settings(tmp_path, server_cert_files), server_cert_files["ca"], {}):
        async with aiohttp.ClientSession() as http, http.get(f"{harness.base_url}/ui/", ssl=harness.client_ssl()) as r:
            assert r.status == 404


async def test_the_usage_page_shows_what_real_traffic_produced(
    bridge: Harness, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    from cloud_bridge.usage import day_of  # here, not at the top: edits to this module stay additive
    from tests.support.bridge import email

    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send([email("u-1"), email("u-2"), email("u-3"), email("u-4", subject="fail")])

        def ended() -> bool:
            final = {"delivered", "failed"}
            return all(final & set(client.states().get(i, [])) for i in ("u-1", "u-2", "u-3", "u-4"))

        await until(ended, what="every intent ended")
    finally:
        await client.stop()
    today = day_of(time.time())

    def browse() -> tuple[list[str], str | None, str | None]:
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, bridge.base_url, PASSWORD)
            driver.get(f"{bridge.base_url}/ui/usage?tenant=acme")
            rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#usage tbody tr")]
            bar = driver.find_element(By.CSS_SELECTOR, f'#usage-chart g[data-day="{today}"]')
            return rows, bar.get_attribute("data-count"), bar.get_attribute("data-failures")

    rows, count, failures = await asyncio.to_thread(browse)
    (row,) = rows
    assert row.split()[:5] == [today, "acme", "email.send", "4", "1"]
    assert (count, failures) == ("4", "1")
    assert len(counting.calls) == 4
