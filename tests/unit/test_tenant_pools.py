"""Rows claimed ahead, re-homed by a reload: on the pool that now runs their tenant's kind, in claim order."""

from __future__ import annotations

from collections import deque
from typing import Any

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.tenant_pools import VENDOR, Pools, Ready, rehomed

EMAIL, SMS = "email.send", "sms.send"


class Named:
    kind = "test"

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, job: Any) -> Any:
        raise AssertionError("not called")

    async def aclose(self) -> None:
        return None


def row(intent_id: str, tenant: str, kind: str = EMAIL) -> LedgerEntry:
    return LedgerEntry("dev-1", tenant, intent_id, "app", kind, {}, 1, 0, 0, None, EntryState.RUNNING)


def test_rows_claimed_ahead_move_to_the_new_integrations_and_the_tenants_new_pool() -> None:
    old = Pools.build({EMAIL: Named("vendor-old"), SMS: Named("sms-old")})  # type: ignore[dict-item]
    new = Pools.build({EMAIL: Named("vendor-new")}, {"bravo": {EMAIL: Named("bravo-own")}})  # type: ignore[dict-item]
    ready: Ready = {
        (EMAIL, VENDOR): deque([(row("a1", "acme"), old), (row("b1", "bravo"), old), (row("a2", "acme"), old)]),
        (SMS, VENDOR): deque([(row("s1", "acme", SMS), old)]),
    }
    moved = rehomed(ready, new)
    assert {pool: [(e.intent_id, p is new) for e, p in rows] for pool, rows in moved.items()} == {
        (EMAIL, VENDOR): [("a1", True), ("a2", True)],  # the vendor's new integration, in claim order
        (EMAIL, "bravo"): [("b1", True)],  # bravo's own account, new at this reload
        (SMS, VENDOR): [("s1", False)],  # no sms any more: it starts on the integration of its claim
    }
