"""What bundles do to the ledger, on every store backend, through `cloud-bridge import`'s own desk over a real
store: one imported again after retention deleted its intents' rows runs none of them again (the running
bridge's retention is operator_api.purge; the executor's claim counts what would run), and a bundle's confirm
of an attempt's result leaves the result of an operator's later retry unconfirmed."""

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
from intent_contract.codec import AckState, Envelope, encode_batch, encode_confirms
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
PUBLIC = public_key_pem(KEY)


def _email(intent_id: str) -> Envelope:
    payload = {"to": ["ops@example.com"], "subject": "Alarm", "text": "Boiler 3 hot"}
    return Envelope(intent_id, "hvac-ui", "email.send", int(NOW * 1000), None, 1, payload)


class _Site:
    """One enrolled device and the desk `cloud-bridge import` uses, on a clock the test moves."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.clock = [NOW]
        self.device = store.registry.redeem(store.registry.create_code("acme", "boiler-7", 3600, NOW), PUBLIC, NOW)
        self.keys = load_or_create(data_dir)
        service = BridgeService(
            ledger=store.ledger,
            policy=PolicyEngine.from_config(TENANTS),
            registry=store.registry,
            clock=lambda: self.clock[0],
            max_intent_age=MAX_AGE,
        )
        counter = itertools.count()
        self.desk = OfflineDesk(
            self.keys, store.registry, store.ledger, service, clock=lambda: self.clock[0],
            new_id=lambda: f"R{next(counter)}",
        )  # fmt: skip

    def stick(self, bundle_id: str, batches: tuple[bytes, ...] = (), confirms: tuple[bytes, ...] = ()) -> bytes:
        """A bundle as `edge-outbox export` writes it: signed by the device, sealed to the bridge."""
        body = Bundle(self.device.device_id, self.keys.public.key_id, bundle_id, int(NOW * 1000), batches, confirms)
        document = signed.sign(body.encode(), KEY, typ=BUNDLE_TYPE, kid=self.device.device_id)
        return sealed.seal(document, self.keys.public.recipient)


@pytest.mark.timeout(60)
async def test_a_bundle_imported_again_after_retention_runs_nothing_twice(store: Store, tmp_path: Path) -> None:
    site = _Site(store, tmp_path / "bridge")
    clock, device, desk = site.clock, site.device, site.desk
    ids = [f"stick-{n}" for n in range(5)]
    stick = site.stick("B1", (encode_batch([_email(i) for i in ids]),))

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


@pytest.mark.timeout(60)
async def test_a_confirm_of_an_attempt_leaves_the_result_of_a_later_retry_unconfirmed(
    store: Store, tmp_path: Path
) -> None:
    """The site confirms attempt 1's failure in its next bundle, days later; meanwhile an operator retried the
    intent and attempt 2 was delivered. That confirm used to confirm attempt 2's result, which then never
    reached the site: it kept `failed` for an intent the bridge had delivered."""
    site = _Site(store, tmp_path / "bridge")
    device_id = site.device.device_id
    await site.desk.import_bundle(site.stick("B1", (encode_batch([_email("x")]),)), max_bytes=1 << 20)
    [entry] = await store.ledger.claim(["email.send"], 10, NOW)
    await store.ledger.finish(entry, EntryState.FAILED, "smtp_refused", "550 no", NOW, "smtp")
    assert [(a.state, a.attempt) for a in await store.ledger.unconfirmed(device_id)] == [(AckState.FAILED, 1)]
    operator_api.retry(store.intents, [device_id, "x"], "alice", NOW + 1)  # the receipt is on its way meanwhile
    [entry] = await store.ledger.claim(["email.send"], 10, NOW + 1)
    await store.ledger.finish(entry, EntryState.DELIVERED, "", "sent", NOW + 1, "smtp")

    await site.desk.import_bundle(site.stick("B2", confirms=(encode_confirms(["x"], 1),)), max_bytes=1 << 20)

    assert [(a.state, a.attempt) for a in await store.ledger.unconfirmed(device_id)] == [(AckState.DELIVERED, 2)]
    await site.desk.import_bundle(site.stick("B3", confirms=(encode_confirms(["x"], 2),)), max_bytes=1 << 20)
    assert await store.ledger.unconfirmed(device_id) == []
    # A confirm that names no attempt (an older outbox's, or over MQTT) confirms whatever result the row has.
    await site.desk.import_bundle(site.stick("B4", (encode_batch([_email("y")]),)), max_bytes=1 << 20)
    [entry] = await store.ledger.claim(["email.send"], 10, NOW + 2)
    await store.ledger.finish(entry, EntryState.DELIVERED, "", "sent", NOW + 2, "smtp")
    await site.desk.import_bundle(site.stick("B5", confirms=(encode_confirms(["y"]),)), max_bytes=1 << 20)
    assert await store.ledger.unconfirmed(device_id) == []
