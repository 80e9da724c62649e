"""On SQLite, operators' reads of the ledger (the usage rollup, the audit) do not hold up its writer.

The ledger's one writer thread runs every operation queued to it, in groups; reads queued there made
every admission and result of the node wait for them. The dashboard's usage page of a fleet of 5,000
devices (600,000 rollup rows) took 1.0-1.8 s: as long a stall of the node's ledger per page view.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge import ledger_sqlite
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.usage import UsageQuery, day_of
from intent_contract.codec import Envelope
from tests.support.stores import admit

NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")
pytestmark = pytest.mark.timeout(60)


def _envelope(ident: str) -> Envelope:
    return Envelope(ident, "hvac-ui", "email.send", int(NOW * 1000), None, 1, {"to": "a@x.example"})


def _reject(_envelope: Envelope) -> Decision:
    return Decision(False, "policy_kind", "not allowed")  # ended at once: a usage row and an audit row


@pytest.mark.parametrize("read", ["usage", "audit"])
async def test_an_admission_is_not_held_up_by_an_operators_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    try:
        await admit(ledger, DEV, [_envelope("r-0")], _reject, NOW)
        reading, release = threading.Event(), threading.Event()
        name = "row_from_sums" if read == "usage" else "_audit_record"
        original: Callable[..., Any] = getattr(ledger_sqlite, name)

        def held(*args: Any) -> Any:  # the read is under way, and stays so until released
            reading.set()
            assert release.wait(30)
            return original(*args)

        monkeypatch.setattr(ledger_sqlite, name, held)
        day = day_of(NOW)
        reads: dict[str, Callable[[], Awaitable[object]]] = {
            "usage": lambda: ledger.usage(UsageQuery(day, day, None)),
            "audit": lambda: ledger.audit("dev-1"),
        }
        reader = asyncio.create_task(reads[read]())
        await asyncio.to_thread(reading.wait, 10)
        admitted = asyncio.create_task(admit(ledger, DEV, [_envelope("a-1")], lambda _e: Decision(True), NOW))
        done, _ = await asyncio.wait({admitted}, timeout=10)
        release.set()
        assert done == {admitted}, "the admission waited for the operator's read"
        assert await reader
    finally:
        release.set()
        await ledger.close()
