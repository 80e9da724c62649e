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

from tests.support.bridge import envelope, make_settings, running_bridge, until

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
        if host != SLOW:
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
INTENTS = {
    "http": ("http.request", {"credential": "crm", "method": "GET", "path": "/x"}),
    "smtp": ("email.send", {"to": ["ops@example.com"], "subject": "Alarm", "text": "Boiler 3 hot"}),
}


@pytest.mark.parametrize(("section", "table"), [("http", HTTP), ("smtp", SMTP)])
async def test_a_name_that_does_not_resolve_does_not_stop_devices_connecting(
    tmp_path: Path,
    server_cert_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    section: str,
    table: dict[str, Any],
) -> None:
    # The SSRF guard resolved with loop.getaddrinfo, and aiosmtplib connects with loop.create_connection (which
    # calls it): on the loop's default thread pool, where device authentication, enrollment and admission run.
    # As many requests or emails to the name as that pool has threads (2 here, 6 on two cores) and no device
    # could connect until the name server answered.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
    names = SilentNameServer()
    monkeypatch.setattr(socket, "getaddrinfo", names.getaddrinfo)
    settings = make_settings(tmp_path, server_cert_files, integrations={section: table}, env={"T": "crm-token-1"})
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
