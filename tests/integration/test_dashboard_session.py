"""The operator's session in a real headless Chromium: logging out ends it in the browser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from cloud_bridge.dashboard.auth import COOKIE
from tests.support.bridge import Harness, counting
from tests.support.browser import chromium, detached, log_in
from tests.support.dashboard import PASSWORD, dashboard_bridge, operator_hashes

__all__ = ["counting", "dashboard_bridge", "operator_hashes"]  # fixtures
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
