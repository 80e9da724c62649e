"""App logins against a real in-process outbox: a name that is not an app costs the same scrypt as an app's,
and a flood of password checks never holds the thread pool /healthz reads on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_outbox.apps_auth import hash_password
from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from intent_contract.mqtt_packets import ConnackCode
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, until

UNUSABLE_SALT = bytes(16)  # intent_contract.passwords.UNUSABLE_HASH's salt
# More CONNECTs at once than the loop's default pool has threads (ThreadPoolExecutor's default size).
FLOOD = min(32, (os.cpu_count() or 1) + 4) + 2


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    settings = OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False,
                              metrics=("127.0.0.1", free_port()), users={"appa": hash_password("pa")})  # fmt: skip
    running = Outbox(settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def scrypt_salts(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The salt of every scrypt the process computes from now on (the real scrypt still runs)."""
    salts: list[bytes] = []
    real = hashlib.scrypt

    def counted(password: bytes, **kw: Any) -> bytes:
        salts.append(kw["salt"])
        return real(password, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    return salts


def login(port: int, username: str, password: bytes) -> int:
    client = RawClient(port)
    try:
        return client.connect(f"{username}-client", username=username, password=password).code
    finally:
        client.close()


async def test_a_name_that_is_no_app_costs_the_scrypt_an_apps_name_does(
    outbox: Outbox, scrypt_salts: list[bytes]
) -> None:
    port = outbox.settings.listen_port
    assert await asyncio.to_thread(login, port, "ghost", b"guess") == ConnackCode.BAD_CREDENTIALS
    # Refused without a scrypt, "ghost" answered in microseconds and "appa" in tens of milliseconds.
    assert scrypt_salts == [UNUSABLE_SALT]
    assert await asyncio.to_thread(login, port, "appa", b"guess") == ConnackCode.BAD_CREDENTIALS
    assert await asyncio.to_thread(login, port, "appa", b"pa") == 0
    assert len(scrypt_salts) == 3 and UNUSABLE_SALT not in scrypt_salts[1:]


async def test_healthz_answers_while_a_flood_of_logins_waits_for_its_password_checks(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, entered = threading.Event(), threading.Event()

    def held(password: bytes, **kw: Any) -> bytes:  # a check that takes as long as the test says; a wrong digest
        entered.set()
        release.wait(60)
        return bytes(64)

    monkeypatch.setattr(hashlib, "scrypt", held)
    codes: list[int] = []
    clients = [
        threading.Thread(target=lambda: codes.append(login(outbox.settings.listen_port, "appa", b"guess")))
        for _ in range(FLOOD)
    ]
    for client in clients:
        client.start()
    try:
        await until(entered.is_set, what="a password check under way")
        host, port = outbox.settings.metrics or ("", 0)
        # Before, every thread of the loop's default pool held a check, and /healthz's read of the store
        # (Store.read_aside) waited behind them all.
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(20),
            http.get(f"http://{host}:{port}/healthz") as answer,
        ):
            assert answer.status == 200
    finally:
        release.set()
        for client in clients:
            await asyncio.to_thread(client.join, 60)
    assert codes == [ConnackCode.BAD_CREDENTIALS] * FLOOD
