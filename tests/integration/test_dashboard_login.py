"""The dashboard's login under attack: names cannot be told apart by the work a refusal costs."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable
from typing import Any

import aiohttp
import pytest

from tests.support.bridge import Harness, counting
from tests.support.dashboard import PASSWORD, LoginAnswer, dashboard_bridge, log_in, operator_hashes
from tests.support.net import until

__all__ = ["counting", "dashboard_bridge", "operator_hashes"]  # fixtures


class CountingScrypt:
    """hashlib.scrypt, counting its calls and their parameters (the work each login does)."""

    def __init__(self) -> None:
        self.real = hashlib.scrypt
        self.calls: list[tuple[int, int, int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, password: bytes, **kw: Any) -> bytes:
        with self._lock:
            self.calls.append((kw["n"], kw["r"], kw["p"], len(kw["salt"])))
        return self.real(password, **kw)

    def take(self) -> list[tuple[int, int, int, int]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


async def test_an_unknown_name_costs_the_same_scrypt_as_a_wrong_password(
    dashboard_bridge: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    scrypt = CountingScrypt()
    monkeypatch.setattr(hashlib, "scrypt", scrypt)
    assert (await log_in(dashboard_bridge, "alice", "wrong")).status == 401
    wrong_password = scrypt.take()
    assert (await log_in(dashboard_bridge, "mallory", "wrong")).status == 401
    unknown_name = scrypt.take()
    assert (await log_in(dashboard_bridge, "alice", PASSWORD)).status == 303
    right = scrypt.take()
    assert len(wrong_password) == 1
    assert unknown_name == wrong_password == right  # one scrypt each, with the same parameters


class HeldScrypt:
    """hashlib.scrypt that waits until released, counting how many run at once."""

    def __init__(self) -> None:
        self.real = hashlib.scrypt
        self.release = threading.Event()
        self.running = self.most = self.entered = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, **kw: Any) -> bytes:
        with self._lock:
            self.entered += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.release.wait(120)
            return self.real(password, **kw)
        finally:
            with self._lock:
                self.running -= 1


async def device_status(harness: Harness, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{harness.base_url}/v1/device", headers=headers, ssl=harness.client_ssl()) as answer,
    ):
        return answer.status


async def test_a_device_is_answered_while_a_login_flood_waits_for_scrypt(
    dashboard_bridge: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 wrong logins from 4 addresses (within the limits) all wait in scrypt; a device asks /v1/device.

    On the loop's default pool (6 threads here) the first logins took every thread and the device's token
    check waited behind them: it was answered only after logins were. Now password checks have a thread of
    their own, one at a time, and the device is answered while every login still waits.
    """
    creds = await dashboard_bridge.enroll()
    held = HeldScrypt()
    monkeypatch.setattr(hashlib, "scrypt", held)
    flood: list[asyncio.Task[int]] = []
    try:
        for n in range(40):
            flood.append(
                asyncio.create_task(
                    status_of(log_in(dashboard_bridge, "alice", "wrong", source=f"127.0.0.{n % 4 + 1}"))
                )
            )
        await until(lambda: held.entered > 0, what="a login in scrypt")
        device = asyncio.create_task(device_status(dashboard_bridge, creds.token()))
        done, _ = await asyncio.wait({device}, timeout=30)  # bounds a failing run: the old pool never answered
        logins_done = sum(t.done() for t in flood)
    finally:
        held.release.set()
    statuses = await asyncio.gather(*flood)
    assert device in done and device.result() == 200
    assert logins_done == 0  # the device was answered before any login
    assert statuses == [401] * 40
    assert held.most == 1  # one password check at a time


async def status_of(answer: Awaitable[LoginAnswer]) -> int:
    return (await answer).status


async def test_logins_are_limited_per_address_with_a_429_page(dashboard_bridge: Harness) -> None:
    for _ in range(10):
        assert (await log_in(dashboard_bridge, "alice", "wrong", source="127.0.0.5")).status == 401
    for password in ("wrong", PASSWORD):  # past the limit even the right password waits
        refused = await log_in(dashboard_bridge, "alice", password, source="127.0.0.5")
        assert refused.status == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 6
        assert "Too many login attempts" in refused.text
    assert (await log_in(dashboard_bridge, "alice", PASSWORD, source="127.0.0.6")).status == 303
