"""The dashboard's fleet and device pages in a real headless Chromium, against what a real device reported:
they say what `cloud-bridge devices ls` says."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cloud_bridge import fleet_query
from cloud_bridge.dashboard import views
from cloud_bridge.dashboard.auth import COOKIE
from cloud_bridge.fleet_cli import link_text
from cloud_bridge.fleet_rules import DeviceRow, clock_text
from intent_contract.device_wire import ErrorLine, encode_health
from intent_contract.wire import HEALTH
from tests.support.bridge import Harness, counting
from tests.support.browser import chromium, log_in
from tests.support.dashboard import PASSWORD, dashboard_bridge, operator_hashes, session
from tests.support.fleet import sample_report
from tests.support.net import until
from tests.support.raw_http import raw_request

__all__ = ["counting", "dashboard_bridge", "operator_hashes"]  # fixtures
pytestmark = pytest.mark.timeout(120)


async def test_an_edge_clock_ahead_is_shown_ahead_as_devices_ls_shows_it(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path]
) -> None:
    bridge = dashboard_bridge
    store = bridge.bridge.store
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        ahead_ms = (2 * 3600 + 30) * 1000  # the edge's clock is 2h00m30s ahead of the bridge's
        client.publish(HEALTH, encode_health(sample_report(at=int(time.time() * 1000) + ahead_ms)))

        def reported() -> int | None:
            rows = fleet_query.overview(store.registry, store.fleet, now=time.time())
            return rows[0].clock_offset_ms if rows else None

        await until(lambda: asyncio.to_thread(reported), what="the store holds the device's report")
        cli = clock_text(await asyncio.to_thread(reported))

        def browse() -> tuple[str, str]:
            with chromium(server_cert_files["cert"]) as driver:
                log_in(driver, bridge.base_url, PASSWORD)
                fleet = driver.find_element(By.CSS_SELECTOR, f'tr[data-device="{creds.device_id}"] td.clock').text
                driver.get(f"{bridge.base_url}/ui/devices/{creds.device_id}")
                return fleet, driver.find_element(By.ID, "clock").text

        fleet, device = await asyncio.to_thread(browse)
    finally:
        await client.stop()
    assert cli == "+2h00m"  # what `devices ls` prints: the edge is ahead
    assert (fleet, device) == (cli, cli)


async def test_a_device_never_seen_is_said_so_as_devices_ls_says_it(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path]
) -> None:
    creds = await dashboard_bridge.enroll()  # enrolled, never connected
    [row] = await asyncio.to_thread(
        fleet_query.overview, dashboard_bridge.bridge.registry, dashboard_bridge.bridge.store.fleet, now=time.time()
    )

    def browse() -> tuple[str, str]:
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, dashboard_bridge.base_url, PASSWORD)
            fleet = driver.find_element(By.CSS_SELECTOR, f'tr[data-device="{creds.device_id}"] td.link').text
            driver.get(f"{dashboard_bridge.base_url}/ui/devices/{creds.device_id}")
            return fleet, driver.find_element(By.ID, "summary").text

    fleet, summary = await asyncio.to_thread(browse)
    assert link_text(row, time.time()) == "never seen"  # devices ls
    assert fleet == "never seen" and summary.startswith("never seen;"), (fleet, summary)  # was "last seen -"


async def test_a_stuck_device_says_why_and_how_old_its_last_error_is_as_the_cli_does(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path]
) -> None:
    """The fleet page flagged a device `stuck` and showed its last error, with neither why it was stuck nor when the
    error was (`devices ls` says `smtp_refused (3h00m ago)`, `devices show` says `stuck: 6 pending, the oldest for
    2h00m`): a week-old error looked like today's, and the device page said nothing of it being stuck."""
    bridge = dashboard_bridge
    store = bridge.bridge.store
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        error = ErrorLine(3 * 3600 * 1000, "smtp_refused", "550 mailbox <unavailable>")
        report = sample_report(at=int(time.time() * 1000), last_error=error, oldest_pending_age_ms=2 * 3600 * 1000)
        client.publish(HEALTH, encode_health(report))

        def row() -> DeviceRow | None:
            rows = fleet_query.overview(store.registry, store.fleet, now=time.time())
            return rows[0] if rows and rows[0].report is not None else None

        await until(lambda: asyncio.to_thread(row), what="the store holds the device's report")

        def browse() -> tuple[str, str, str]:
            def text(driver: WebDriver, how: str, what: str) -> str:
                found = driver.find_elements(how, what)
                return str(found[0].text) if found else ""

            with chromium(server_cert_files["cert"]) as driver:
                log_in(driver, bridge.base_url, PASSWORD)
                fleet = text(driver, By.CSS_SELECTOR, f'tr[data-device="{creds.device_id}"] td:nth-child(7)')
                driver.get(f"{bridge.base_url}/ui/devices/{creds.device_id}")
                return fleet, text(driver, By.ID, "summary"), text(driver, By.ID, "stuck")

        fleet, summary, stuck = await asyncio.to_thread(browse)
        found = await asyncio.to_thread(row)
    finally:
        await client.stop()
    assert found is not None and found.stuck == "6 pending, the oldest for 2h00m"  # as `devices show` prints it
    assert fleet == "smtp_refused: 550 mailbox <unavailable> (3h00m ago)", (
        fleet
    )  # `devices ls`: smtp_refused (3h00m ago)
    assert "last error: smtp_refused: 550 mailbox <unavailable> (3h00m ago)" in summary, summary
    assert stuck == f"stuck: {found.stuck}"


async def test_the_fleet_page_filters_by_tenant_and_stuck_and_says_when_it_shows_only_some(
    dashboard_bridge: Harness, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet page listed every device, tens of thousands of rows for a large fleet, with no way to look at one
    tenant's or only the stuck ones, which `devices ls --tenant --stuck` can."""
    monkeypatch.setattr(views, "FLEET_ROWS", 2)
    bridge = dashboard_bridge
    store = bridge.bridge.store
    acme = [await bridge.enroll("acme", f"boiler-{i}") for i in range(3)]
    beta = await bridge.enroll("beta", "pump-1")
    client = await bridge.connect(acme[2])
    try:  # one device stuck: 6 pending, the oldest for 2 h
        client.publish(
            HEALTH, encode_health(sample_report(at=int(time.time() * 1000), oldest_pending_age_ms=2 * 3600 * 1000))
        )

        def stuck() -> list[str]:
            return [r.device_id for r in fleet_query.overview(store.registry, store.fleet, stuck_only=True)]

        await until(lambda: asyncio.to_thread(stuck), what="the store holds the stuck device's report")
    finally:
        await client.stop()

    def browse() -> list[tuple[str, list[str], bool]]:
        seen = []
        with chromium(server_cert_files["cert"]) as driver:
            log_in(driver, bridge.base_url, PASSWORD)
            for query in ("", "?tenant=beta", "?stuck=1", "?tenant=beta&stuck=1"):
                driver.get(f"{bridge.base_url}/ui/{query}")
                rows = [
                    str(r.get_attribute("data-device")) for r in driver.find_elements(By.CSS_SELECTOR, "#fleet tr")[1:]
                ]
                seen.append(
                    (str(driver.find_element(By.ID, "counts").text), rows, bool(driver.find_elements(By.ID, "more")))
                )
        return seen

    everything, of_beta, stuck_only, none = await asyncio.to_thread(browse)
    first_other = min(d.device_id for d in (acme[0], acme[1], beta))  # none has pending work: by id
    assert everything == ("4 devices, 1 stuck", [acme[2].device_id, first_other], True)  # stuck first
    assert of_beta == ("1 device of beta, 0 stuck", [beta.device_id], False)
    assert stuck_only == ("1 device, 1 stuck", [acme[2].device_id], False)
    assert none == ("0 devices of beta, 0 stuck", [], False)
    status, _ = await raw_request(
        bridge, "GET", "/ui/?tenant=acme,beta", [("Cookie", f"{COOKIE}={await session(bridge)}".encode())]
    )
    assert status == 400
