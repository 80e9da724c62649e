"""A bundle imported again after retention deleted its intents' rows runs none of them again, on every
store backend: `cloud-bridge import` over a real store, the running bridge's retention (operator_api.purge),
and the executor's claim counting what would run."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cloud_bridge import operator_api
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.offline_import import OfflineDesk
from cloud_bridge.offline_keys import load_or_create
from cloud_bridge.policy import PolicyEngine
from cloud_bridge.service import BridgeService
from cloud_bridge.store import Store
from intent_contract import sealed, signed
from intent_contract.codec import AckState, Envelope, encode_batch
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.offline_wire import BUNDLE_TYPE, Bundle
from tests.support.bridge import TENANTS
from tests.support.stores import store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0
DAY = 86_400.0
RETENTION = 30 * DAY  # [bridge] intent_retention's default
MAX_AGE = 90 * DAY  # [bridge] max_intent_age's default
KEY = generate_private_key_pem()


def _email(intent_id: str) -> Envelope:
    payload = {"to": ["ops@example.com"], "subject": "Alarm", "text": "Boiler 3 hot"}
    return Envelope(intent_id, "hvac-ui", "email.send", int(NOW * 1000), None, 1, payload)


@pytest.mark.timeout(60)
async def test_a_bundle_imported_again_after_retention_runs_nothing_twice(store: Store, tmp_path: Path) -> None:
    clock = [NOW]
    code = store.registry.create_code("acme", "boiler-7", 3600, NOW)
    device = store.registry.redeem(code, public_key_pem(KEY), NOW)
    keys = load_or_create(tmp_path / "bridge")
    service = BridgeService(
        ledger=store.ledger,
        policy=PolicyEngine.from_config(TENANTS),
        registry=store.registry,
        clock=lambda: clock[0],
        max_intent_age=MAX_AGE,
    )
    counter = itertools.count()
    desk = OfflineDesk(
        keys, store.registry, store.ledger, service, clock=lambda: clock[0], new_id=lambda: f"R{next(counter)}"
    )
    ids = [f"stick-{n}" for n in range(5)]
    body = Bundle(
        device.device_id, keys.public.key_id, "B1", int(NOW * 1000), (encode_batch([_email(i) for i in ids]),)
    )
    stick = sealed.seal(signed.sign(body.encode(), KEY, typ=BUNDLE_TYPE, kid=device.device_id), keys.public.recipient)

    first = await desk.import_bundle(stick, max_bytes=1 << 20)
    assert {a.state for a in first.acks} == {AckState.ACCEPTED}
    ran = await store.ledger.claim(["email.send"], 100, NOW)
    assert sorted(e.intent_id for e in ran) == ids
    for entry in ran:
        await store.ledger.finish(entry, EntryState.DELIVERED, "", "", NOW, "smtp")
    assert await store.ledger.confirm(device.device_id, ids) == len(ids)  # the next bundle's confirms

    clock[0] = NOW + RETENTION + DAY  # the running bridge's retention deletes what it may
    operator_api.purge(store.intents, intents_age=RETENTION, audit_age=None, now=clock[0], max_intent_age=MAX_AGE)
    again = await desk.import_bundle(stick, max_bytes=1 << 20)  # the same stick, brought in again
    assert sorted(a.id for a in again.acks) == ids
    assert {a.state for a in again.acks} == {AckState.DELIVERED}
    assert await store.ledger.claim(["email.send"], 100, clock[0]) == []  # nothing runs a second time

    clock[0] = NOW + MAX_AGE + DAY  # once the bridge refuses the bundle's intents as too old, rows may go
    done = operator_api.purge(
        store.intents, intents_age=RETENTION, audit_age=None, now=clock[0], max_intent_age=MAX_AGE
    )
    assert done.intents == len(ids)
    late = await desk.import_bundle(stick, max_bytes=1 << 20)
    assert {(a.state, a.code) for a in late.acks} == {(AckState.REJECTED, "too_old")}
    assert await store.ledger.claim(["email.send"], 100, clock[0]) == []
