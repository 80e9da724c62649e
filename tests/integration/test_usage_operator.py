"""Usage counts what operators end: a cancelled intent ended at the bridge (failed, `cancelled`), both backends."""

from __future__ import annotations

from cloud_bridge import operator_api
from cloud_bridge.audit import AuditEvent
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store import Store
from cloud_bridge.usage import Dimension, UsageQuery, day_of
from intent_contract.codec import Envelope
from tests.support.stores import admit, store, store_url

__all__ = ["store", "store_url"]  # fixtures
NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")


def allow(_envelope: Envelope) -> Decision:
    return Decision(True)


async def test_a_cancelled_intent_counts_as_ended_failed_in_usage_as_in_the_audit(store: Store) -> None:
    envelopes = [Envelope(i, "hvac-ui", "email.send", int(NOW * 1000), None, 1, {"to": "a@x.example"}) for i in "ab"]
    await admit(store.ledger, DEV, envelopes, allow, NOW)
    operator_api.cancel(store.intents, ["a"], "bob", NOW + 1)
    day = day_of(NOW)
    by = (Dimension.DAY, Dimension.TENANT, Dimension.KIND)
    [row] = await store.ledger.usage(UsageQuery(day, day, "acme", group=by))
    assert (row.count, row.failures) == (1, 1)  # 'b' is still queued: not ended, not counted
    ended = [r for r in await store.ledger.audit("dev-1") if r.event is AuditEvent.CANCEL]
    assert len(ended) == row.count  # usage and audit agree
