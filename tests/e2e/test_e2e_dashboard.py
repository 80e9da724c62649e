"""The dashboard's intents in a real headless Chromium, for a device served by a real edge.

The provider refuses one intent for good and keeps deferring another: the device's page shows the
backlog its edge reported and its intents; clicking `retry` on the failed one makes it run again, and
the edge's app hears it (`forwarded`, code `bridge_retry`, then `delivered`). Clicking `cancel` on the
deferred one (while it waits between tries) ends it `failed`/`cancelled` at the app.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from intent_contract.passwords import hash_password
from tests.support.browser import chromium, log_in
from tests.support.edge import Client
from tests.support.net import wait_until
from tests.support.stack import STATUS_TOPIC, Stack

PASSWORD = "correct horse battery"
REFUSE = "550 5.7.1 mailbox unavailable"
LATER = "451 4.3.0 try again later"


@pytest.fixture
def stack(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[Stack]:
    """A bridge with a dashboard (operator alice), deferred retries every 0-2 s; its edge enrolled."""
    with contextlib.ExitStack() as resources:
        stack = Stack(tmp_path, server_cert_files)
        resources.callback(stack.close)
        bridge = stack.bridge
        text = bridge.config.read_text().replace(
            "retry_base = 0.1\nretry_cap = 1.0\n", "retry_base = 2.0\nretry_cap = 2.0\nmax_attempts = 1000\n"
        )
        text += '\n[dashboard]\nsession_key_env = "DASHBOARD_KEY"\n\n[dashboard.operators]\n'
        text += f'alice = "{hash_password(PASSWORD)}"\n'
        bridge.config.write_text(text)
        bridge.env = {**os.environ, "DASHBOARD_KEY": "k" * 40}
        bridge.start()
        stack.enroll()
        yield stack


def _heard(app: Client, intent_id: str, *wanted: tuple[str, str]) -> bool:
    with app._lock:  # the test client's own lock over what it heard
        heard = iter([(s["state"], s["code"]) for _t, s in app.statuses if s["id"] == intent_id])
    return all(w in heard for w in wanted)


def _row_state(driver: WebDriver, intent_id: str) -> str:
    return str(
        driver.find_element(By.CSS_SELECTOR, f'#intents tr[data-intent="{intent_id}"]').get_attribute("data-state")
    )


def _click(driver: WebDriver, intent_id: str, action: str) -> str:
    """Click the row's button and return the outcome the next page shows; "" when the row offers no such
    button now (e.g. no cancel while it runs). The page it is on has no notice: the next one does."""
    try:
        button = driver.find_element(By.CSS_SELECTOR, f'#intents tr[data-intent="{intent_id}"] button.{action}')
    except NoSuchElementException:
        return ""
    button.click()
    notices = wait_until(lambda: driver.find_elements(By.ID, "notice"), 30, 0.1, what=f"the {action} outcome")
    return str(notices[0].text)


@pytest.mark.timeout(240)
def test_the_device_page_shows_a_real_edges_intents_and_its_buttons_retry_and_cancel_them(
    stack: Stack, server_cert_files: dict[str, Path]
) -> None:
    sink = stack.sink
    sink.answer("dash-failed", REFUSE)
    sink.answer("dash-later", LATER)
    stack.start_edge("--health-interval", "1s")
    app = Client(stack.edge_port, "dashboard-app", inflight=50).connect()
    stack.apps.append(app)
    app.subscribe(STATUS_TOPIC)
    stack.publish_all(app, ["dash-failed", "dash-later"])
    wait_until(lambda: _heard(app, "dash-failed", ("failed", "smtp_550")), 60, 0.2, what="the refused intent failed")
    wait_until(lambda: sink.refusals("dash-later") >= 1, 60, 0.2, what="a first try of the deferred intent")

    base = stack.bridge.url
    with chromium(server_cert_files["cert"]) as driver:
        log_in(driver, base, PASSWORD)
        page = f"{base}/ui/devices/{stack.device_id}"

        def backlog_shown() -> bool:  # the edge reports once a second; the deferred intent is its backlog
            driver.get(page)
            return driver.find_element(By.ID, "backlog").text == "1"

        wait_until(backlog_shown, 60, 0.5, what="the edge's backlog on the device page")
        assert _row_state(driver, "dash-failed") == "failed"
        assert driver.find_elements(By.CSS_SELECTOR, '#intents tr[data-intent="dash-failed"] button.retry')
        assert not driver.find_elements(By.CSS_SELECTOR, '#intents tr[data-intent="dash-failed"] button.cancel')

        sink.answer("dash-failed", None)
        notice = _click(driver, "dash-failed", "retry")
        assert notice.startswith(f"retried {stack.device_id}/dash-failed"), notice
        wait_until(
            lambda: _heard(app, "dash-failed", ("forwarded", "bridge_retry"), ("delivered", "")),
            60, 0.2, what="the retried intent's statuses at the app",
        )  # fmt: skip
        assert sink.executions()["dash-failed"] == 1

        def cancelled() -> bool:  # refused while its call is under way
            driver.get(page)
            notice = _click(driver, "dash-later", "cancel")
            done = notice.startswith(f"cancelled {stack.device_id}/dash-later")
            # It may be in a try at the click: refused, the page says why.
            refused = notice.startswith("cancel refused: cannot cancel intent dash-later") and "under way" in notice
            assert done or refused or notice == "", notice
            return done

        wait_until(cancelled, 60, 0.5, what="a cancel between two tries")
        wait_until(lambda: _heard(app, "dash-later", ("failed", "cancelled")), 60, 0.2, what="the cancel at the app")
        driver.get(page)
        assert _row_state(driver, "dash-later") == "failed"
        assert _row_state(driver, "dash-failed") == "delivered"
    assert stack.edge_states() == {"dash-failed": "delivered", "dash-later": "failed"}
