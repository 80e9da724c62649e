"""The dashboard's login under attack: names cannot be told apart by the work a refusal costs."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest

from tests.support.bridge import Harness
from tests.support.dashboard import PASSWORD, dashboard_bridge, log_in, operator_hashes

__all__ = ["dashboard_bridge", "operator_hashes"]  # fixtures


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
