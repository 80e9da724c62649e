"""App logins against a real in-process outbox: a name that is not an app costs the same scrypt as an app's."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_outbox.apps_auth import hash_password
from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from intent_contract.mqtt_packets import ConnackCode
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port

UNUSABLE_SALT = bytes(16)  # intent_contract.passwords.UNUSABLE_HASH's salt


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    settings = OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False,
                              users={"appa": hash_password("pa")})  # fmt: skip
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
