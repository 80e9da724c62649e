"""A real headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, for the dashboard.

The browser trusts exactly the test server's key (Chromium's SPKI pin list), not "any certificate":
the page is still served over verified TLS, to a browser that knows only that key.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.services import unavailable

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def spki_pin(cert_pem: Path) -> str:
    """base64 SHA-256 of a certificate's public key, as Chromium's pin list wants it."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(server_cert: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium that trusts the key of `server_cert`; quit on exit."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        unavailable("Chromium is not installed (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={spki_pin(server_cert)}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def detached(element: WebElement) -> bool:
    """Whether `element`'s page has gone: Selenium's `staleness_of`, and "not yet" for the answer Chromium gives
    while the node is being taken out mid-navigation ("Node with given id does not belong to the document", an
    "unknown error" that `staleness_of` lets through: it failed a login under a loaded disk)."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" not in str(exc.msg):
            raise
    return False


def log_in(driver: WebDriver, base: str, password: str, operator: str = "alice") -> None:
    """Log in on the dashboard at `base` and wait for the answer: the fleet page, or the login page's error.

    The click only starts the form's navigation; a page asked for before it ends is asked without the session
    cookie (and is the login page): seen as a flaky "no such element" under a loaded machine.
    """
    driver.get(f"{base}/ui/")
    driver.find_element(By.ID, "user").send_keys(operator)
    driver.find_element(By.ID, "password").send_keys(password)
    button = driver.find_element(By.ID, "login")
    button.click()
    wait = WebDriverWait(driver, 30)
    wait.until(lambda _: detached(button))
    wait.until(lambda d: d.find_elements(By.ID, "fleet") or d.find_elements(By.ID, "error"))
