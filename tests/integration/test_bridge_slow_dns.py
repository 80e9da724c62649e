"""http.request and email.send through a real bridge while the provider's name does not resolve: the rest of
the bridge works."""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.bridge import TENANTS, envelope, make_settings, running_bridge, until

SLOW = "slow-dns.example"


class SilentNameServer:
    """socket.getaddrinfo as glibc behaves when the name server does not answer, for one name: it blocks (here
    until released: glibc waits its timeout times its attempts, per server), then fails."""

    def __init__(self) -> None:
        self.blocked = 0
        self.released = threading.Event()
        self._real = socket.getaddrinfo
        self._lock = threading.Lock()

    def getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if (host.decode() if isinstance(host, bytes) else host) != SLOW:  # anyio (httpx) asks with IDNA bytes
            return self._real(host, *args, **kwargs)
        with self._lock:
            self.blocked += 1
        try:
            self.released.wait()
        finally:
            with self._lock:
                self.blocked -= 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


HTTP = {"concurrency": 2, "credentials": {"crm": {"base_urls": [f"https://{SLOW}/v1/"], "token_env": "T"}}}
SMTP = {"host": SLOW, "security": "none", "concurrency": 2}
SMS = {"base_url": f"https://{SLOW}", "account_sid": "ACslow", "auth_token_env": "T", "from": "+15550100",
       "concurrency": 2}  # fmt: skip
INTENTS = {
    "http": ("http.request", {"credential": "crm", "method": "GET", "path": "/x"}),
    "smtp": ("email.send", {"to": ["ops@example.com"], "subject": "Alarm", "text": "Boiler 3 hot"}),
    "sms": ("sms.send", {"to": "+4915112345678", "text": "Boiler 3 hot"}),
}
# The test tenant's policy, with sms.send allowed too.
POLICY = {**TENANTS["acme"]["policy"], "kinds": [*TENANTS["acme"]["policy"]["kinds"], "sms.send"]}


@pytest.mark.parametrize(("section", "table"), [("http", HTTP), ("smtp", SMTP), ("sms", SMS)])
async def test_a_name_that_does_not_resolve_does_not_stop_devices_connecting(
    tmp_path: Path,
    server_cert_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    section: str,
    table: dict[str, Any],
) -> None:
    # The SSRF guard resolved with loop.getaddrinfo, and aiosmtplib connects with loop.create_connection (which
    # calls it): on the loop's default thread pool, where device authentication, enrollment and admission ran.
    # As many requests or emails to the name as that pool has threads (2 here, 6 on two cores) and no device
    # could connect until the name server answered. httpx (sms.send) still looks names up there (through
    # anyio); the bridge's own work now runs in a pool of its own (cloud_bridge.own_threads).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
    names = SilentNameServer()
    monkeypatch.setattr(socket, "getaddrinfo", names.getaddrinfo)
    tenants = {"acme": {"policy": POLICY}}
    settings = make_settings(
        tmp_path, server_cert_files, tenants=tenants, integrations={section: table}, env={"T": "crm-token-1"}
    )
    kind, payload = INTENTS[section]
    try:
        async for harness in running_bridge(settings, server_cert_files["ca"], None):
            sender = await harness.connect(await harness.enroll(name="panel"))
            other = await harness.enroll(name="boiler")
            sender.send([envelope(f"i-{i}", kind, payload) for i in range(2)])
            await until(lambda: names.blocked == 2, what="both calls waiting for the name")

            assert await harness.connack(other) == 0  # accepted

            assert names.blocked == 2  # while both lookups still waited
            names.released.set()
            await sender.stop()
    finally:
        names.released.set()
