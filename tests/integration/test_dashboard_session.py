"""The operator in a real headless Chromium: logging out ends the session in the browser; reloading the page
an action led to does not take the action again; a table that shows fewer intents than match says so."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from cloud_bridge import operator_api
from cloud_bridge.dashboard.auth import COOKIE
from cloud_bridge.dashboard.views import DEVICE_INTENT_ROWS, INTENT_ROWS
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, Harness, counting, email, make_settings, running_bridge
from tests.support.browser import chromium, detached, log_in
from tests.support.dashboard import PASSWORD, dashboard_bridge, operator_hashes
from tests.support.net import until
from tests.support.stores import pg_url

__all__ = ["counting", "dashboard_bridge", "operator_hashes", "pg_url"]  # fixtures
pytestmark = pytest.mark.timeout(120)


async def test_log_out_ends_the_session_in_the_browser(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path]
) -> None:
    base = dashboard_bridge.base_url

    def browse() -> tuple[bool, bool, str, bool]:
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, base, PASSWORD)
            had_cookie = driver.get_cookie(COOKIE) is not None
            button = driver.find_element(By.CSS_SELECTOR, "header form button")
            button.click()
            WebDriverWait(driver, 30).until(lambda _: detached(button))
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "login"))
            still = driver.get_cookie(COOKIE) is not None
            driver.get(f"{base}/ui/")  # the fleet page again: the login page once the session is gone
            return had_cookie, still, driver.current_url, bool(driver.find_elements(By.ID, "fleet"))

    had_cookie, still, url, fleet = await asyncio.to_thread(browse)
    assert had_cookie
    assert not still, "the session cookie outlived the logout"
    assert url.endswith("/ui/login") and not fleet


async def test_reloading_the_page_after_a_retry_does_not_retry_again(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    bridge = dashboard_bridge
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send([email("r-1", subject="fail")])
        await until(lambda: "failed" in client.states().get("r-1", []), what="the intent failed")
        base = bridge.base_url

        def retry_then_reload() -> tuple[str, str]:
            with chromium(server_cert_files["cert"]) as driver:
                log_in(driver, base, PASSWORD)
                driver.get(f"{base}/ui/intents?device={creds.device_id}")
                button = driver.find_element(By.CSS_SELECTOR, 'tr[data-intent="r-1"] button.retry')
                button.click()
                WebDriverWait(driver, 30).until(lambda _: detached(button))
                notice = driver.find_element(By.ID, "notice").text
                # The retried intent fails again (same subject); the operator then reloads the page they are on.
                WebDriverWait(driver, 30).until(lambda _: client.states()["r-1"].count("failed") == 2)
                driver.refresh()
                WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "intents"))
                again = driver.find_elements(By.ID, "notice")
                return notice, again[0].text if again else ""

        notice, after = await asyncio.to_thread(retry_then_reload)
    finally:
        await client.stop()
    assert notice.startswith(f"retried {creds.device_id}/r-1"), notice
    assert [job.attempt for job in counting.calls] == [1, 2], f"the reload sent the retry again: {after}"
    assert after == ""  # the notice is shown once


async def test_the_intent_tables_say_when_more_match_than_they_show(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    bridge = dashboard_bridge
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    ids = [f"m-{n:03d}" for n in range(INTENT_ROWS + 1)]
    try:
        client.send([email(i, subject="fail" if i == ids[0] else "ok") for i in ids])
        await until(lambda: len(counting.calls) == len(ids), what="every intent ran")
    finally:
        await client.stop()
    base, device = bridge.base_url, creds.device_id

    def pages() -> list[tuple[int, str]]:
        seen = []
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, base, PASSWORD)
            for path in (f"intents?device={device}", f"devices/{device}", "intents?state=failed"):
                driver.get(f"{base}/ui/{path}")
                rows = driver.find_elements(By.CSS_SELECTOR, "#intents tbody tr")
                more = driver.find_elements(By.ID, "more")
                seen.append((len(rows), more[0].text if more else ""))
        return seen

    (listed, listed_more), (device_rows, device_more), (failed, failed_more) = await asyncio.to_thread(pages)
    assert listed == INTENT_ROWS and listed_more.startswith(f"These are the {INTENT_ROWS} most recently changed")
    assert device_rows == DEVICE_INTENT_ROWS and "more match" in device_more
    assert (failed, failed_more) == (1, "")  # a filter that matches fewer says nothing more


async def test_nodes_sharing_a_store_without_a_session_key_say_their_sessions_are_their_own(
    tmp_path: Path,
    server_cert_files: dict[str, Path],
    operator_hashes: dict[str, str],
    pg_url: StoreUrl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two nodes on one PostgreSQL store, no session key: each made its own, so a login on node A is no session
    on node B (the browser shows B's login page). Nothing said so; now each node warns at start."""
    nodes = [
        make_settings(
            tmp_path / n, server_cert_files, store=pg_url, node_id=n, dashboard={"operators": operator_hashes}
        )
        for n in ("node-a", "node-b")
    ]
    async with contextlib.AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(contextlib.aclosing(running_bridge(s, server_cert_files["ca"], {})))
            for s in nodes
        ]
        harness_a, harness_b = await anext(a), await anext(b)

        def browse() -> tuple[bool, bool]:
            with chromium(server_cert_files["cert"]) as driver:
                log_in(driver, harness_a.base_url, PASSWORD)
                on_a = bool(driver.find_elements(By.ID, "fleet"))
                driver.get(f"{harness_b.base_url}/ui/")  # the same host: the browser sends the same cookie
                return on_a, bool(driver.find_elements(By.ID, "fleet"))

        on_a, on_b = await asyncio.to_thread(browse)
    assert (on_a, on_b) == (True, False)  # what an operator behind a load balancer meets
    warnings = [r for r in caplog.records if "[dashboard] has no session key" in r.getMessage()]
    assert len(warnings) == 2, caplog.text  # each node said so


async def test_a_form_of_a_tab_whose_session_ended_leads_to_the_login_page(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    """Logged out in one tab, the operator clicks retry, then Log out, in tabs opened before: each was a bare 403
    "log in first" page. Now each leads to the login page, the retry's saying that nothing was done."""
    bridge = dashboard_bridge
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send([email("t-1", subject="fail")])
        await until(lambda: "failed" in client.states().get("t-1", []), what="the intent failed")
    finally:
        await client.stop()
    base = bridge.base_url

    def click(driver: WebDriver, css: str) -> tuple[str, str]:
        """Click the button at `css` and wait for the next page: its URL and its notice ("" for none)."""
        button = driver.find_element(By.CSS_SELECTOR, css)
        button.click()
        WebDriverWait(driver, 30).until(lambda _: detached(button))
        notice = driver.find_elements(By.ID, "notice")
        return driver.current_url, notice[0].text if notice else ""

    def browse() -> tuple[tuple[str, str], tuple[str, str], bool]:
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, base, PASSWORD)
            driver.get(f"{base}/ui/intents?device={creds.device_id}")
            intents_tab = driver.current_window_handle
            driver.switch_to.new_window("tab")
            driver.get(f"{base}/ui/")
            fleet_tab = driver.current_window_handle
            driver.switch_to.new_window("tab")
            driver.get(f"{base}/ui/")
            click(driver, "header form button")  # logged out in this third tab
            driver.switch_to.window(intents_tab)
            retried = click(driver, 'tr[data-intent="t-1"] button.retry')
            login_form = bool(driver.find_elements(By.ID, "login"))
            driver.switch_to.window(fleet_tab)
            logged_out = click(driver, "header form button")
            return retried, logged_out, login_form and bool(driver.find_elements(By.ID, "login"))

    (retry_url, retry_notice), (logout_url, logout_notice), login_pages = await asyncio.to_thread(browse)
    assert retry_url.endswith("/ui/login") and logout_url.endswith("/ui/login") and login_pages
    assert retry_notice.startswith("Your session had ended"), retry_notice
    assert "nothing was done" in retry_notice and logout_notice == ""
    assert [job.attempt for job in counting.calls] == [1]  # not retried


async def test_a_retry_from_a_page_shown_before_the_intent_changed_does_nothing(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> None:
    """Two operators see t-2 failed; one retries it from the CLI and it fails again; the other then clicks retry
    on the page they opened before: that ran it a third time. The page's form names the attempt it showed; a row
    that moved on since is left alone, and the notice says what it is now."""
    bridge = dashboard_bridge
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        client.send([email("t-2", subject="fail")])
        await until(lambda: "failed" in client.states().get("t-2", []), what="the intent failed")
        base, store = bridge.base_url, bridge.bridge.store

        def retry_on_a_stale_page() -> str:
            with chromium(server_cert_files["cert"]) as driver:
                log_in(driver, base, PASSWORD)
                driver.get(f"{base}/ui/intents?device={creds.device_id}")
                button = driver.find_element(By.CSS_SELECTOR, 'tr[data-intent="t-2"] button.retry')
                # Meanwhile `cloud-bridge intents retry` by another operator; attempt 2 fails too.
                operator_api.retry(store.intents, (creds.device_id, "t-2"), "bob", time.time())
                WebDriverWait(driver, 30).until(lambda _: client.states()["t-2"].count("failed") == 2)
                button.click()
                WebDriverWait(driver, 30).until(lambda _: detached(button))
                return str(driver.find_element(By.ID, "notice").text)

        notice = await asyncio.to_thread(retry_on_a_stale_page)
    finally:
        await client.stop()
    assert [job.attempt for job in counting.calls] == [1, 2], notice  # not a third time
    assert notice == (
        f"retry not done: {creds.device_id}/t-2 changed since the page was shown (now failed, attempt 2);"
        " look at it again"
    )
