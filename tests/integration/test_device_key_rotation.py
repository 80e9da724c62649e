"""The bridge's side of a device key rotation (cloud_bridge/device_keys.py), against every store backend, and
what it does to the sessions the old key opened."""

from __future__ import annotations

import base64
import struct
import time

import pytest

from cloud_bridge.device_keys import accept_rotation
from cloud_bridge.errors import AuthError
from cloud_bridge.store import Store
from intent_contract import signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem, sign_device_token
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from tests.support.bridge import Creds, Harness, counting, harness, rotation_document, until
from tests.support.stores import store, store_url

__all__ = ["counting", "harness", "store", "store_url"]  # fixtures

NOW = 1_800_000_000.0


def rotation(device_id: str, current: bytes, proposed: bytes) -> bytes:
    return rotation_document(device_id, current, proposed, NOW)


async def test_a_device_rotates_again_before_using_its_new_key(store: Store) -> None:
    registry = store.registry
    first, second, third = (generate_private_key_pem() for _ in range(3))
    device = registry.redeem(registry.create_code("acme", "boiler-7", 3600, NOW), public_key_pem(first), NOW)
    accept_rotation(registry, rotation(device.device_id, first, second), NOW + 1)
    # The device switched to `second` and runs rotate-key again before it connected: signed with `second`.
    rotated = accept_rotation(registry, rotation(device.device_id, second, third), NOW + 2)
    assert (rotated.public_key, rotated.next_public_key) == (public_key_pem(second), public_key_pem(third))
    # The first key ended at the second's first use; a rotation it signs is refused.
    with pytest.raises(AuthError) as refused:
        accept_rotation(registry, rotation(device.device_id, first, generate_private_key_pem()), NOW + 3)
    assert refused.value.code == "key_replaced"  # the device's own old key, not a forger's


async def test_the_old_keys_session_ends_when_the_new_key_is_first_used_elsewhere(harness: Harness) -> None:
    """A session opened with the old key (a thief's, say) lived on after the new key's first use when that use
    was not a CONNECT (here `/v1/device`; on several nodes, a CONNECT to another node): nothing ended it."""
    creds = await harness.enroll()
    old_session = await harness.connect(creds)
    try:
        assert old_session.accepted
        new, document = creds.rotated()
        assert (await harness.post("/v1/rotate-key", document))[0] == 200
        assert not old_session.disconnected.is_set()  # proposed only: the old key still works
        assert (await harness.device_status(new))[0] == 200  # the new key's first use
        await until(old_session.disconnected.is_set, timeout=5, what="the old key's session ended")
        assert not (await harness.connect(creds)).accepted
        new_session = await harness.connect(new)
        try:
            assert new_session.accepted
        finally:
            await new_session.stop()
    finally:
        await old_session.stop()


async def test_the_replaced_key_is_refused_as_replaced_and_a_strangers_key_as_not_verifying(harness: Harness) -> None:
    """The old key was refused like a forger's (`token_invalid`), which sent operators looking for an attacker
    when a device restored from a backup (or a bundle made before its switch) used the key it had replaced."""
    creds = await harness.enroll()
    new, document = creds.rotated()
    assert (await harness.post("/v1/rotate-key", document))[0] == 200
    assert (await harness.device_status(new))[0] == 200  # the switch
    status, body = await harness.device_status(creds)
    assert (status, body["error"]) == (401, "key_replaced")
    stranger = Creds(creds.device_id, generate_private_key_pem())
    status, body = await harness.device_status(stranger)
    assert (status, body["error"]) == (401, "token_invalid")
    old = await harness.connect(creds)
    try:
        assert not old.accepted
        assert harness.bridge.metrics.connects_refused.labels("key_replaced")._value.get() == 1
    finally:
        await old.stop()


# An OpenSSH key of a type cryptography does not know: pyjwt reads a key beginning `ecdsa-sha2-` as one.
UNLOADABLE_KEY = "ecdsa-sha2-x " + base64.b64encode(struct.pack("!I", 12) + b"ecdsa-sha2-x").decode()


async def test_a_proposed_key_that_cannot_be_loaded_is_refused_and_the_device_keeps_its_key(harness: Harness) -> None:
    """Its UnsupportedAlgorithm went past every handler of the rotation: a 500 and a traceback in the log."""
    creds = await harness.enroll()
    made = int(time.time() * 1000)
    inner = signed.sign(NewKey(creds.device_id, UNLOADABLE_KEY, made).encode(), generate_private_key_pem(),
                        typ=NEW_KEY_TYPE, kid=creds.device_id)  # fmt: skip
    document = signed.sign(inner, creds.private_pem, typ=KEY_ROTATION_TYPE, kid=creds.device_id)
    status, body = await harness.post("/v1/rotate-key", document)
    assert (status, body["error"]) == (403, "rotation_refused")
    assert (await harness.device_status(creds))[0] == 200
    device = harness.bridge.registry.get(creds.device_id)
    assert device is not None and device.next_public_key is None


async def test_a_token_of_the_next_key_refused_for_its_clock_says_so_not_that_it_does_not_verify(
    harness: Harness,
) -> None:
    """A device that had just rotated, its clock an hour slow, was refused `token_invalid` (the current key's
    "Signature verification failed") where the same token of its current key was `token_expired`: the log, the
    metrics and the audit sent its operator looking for a forger instead of at the device's clock."""
    creds = await harness.enroll()
    new, document = creds.rotated()
    assert (await harness.post("/v1/rotate-key", document))[0] == 200
    an_hour_ago = int(time.time()) - 3600
    slow = sign_device_token(new.private_pem, new.device_id, an_hour_ago, lifetime_s=600, audience="cloud-bridge")
    status, body = await harness.device_status(new, token=slow)
    assert (status, body["error"]) == (401, "token_expired")
    refused = await harness.connect(new, password=sign_device_token(
        new.private_pem, new.device_id, an_hour_ago, lifetime_s=600, audience="cloud-bridge"))  # fmt: skip
    try:
        assert not refused.accepted
        assert harness.bridge.metrics.connects_refused.labels("token_expired")._value.get() == 1
        assert harness.bridge.metrics.connects_refused.labels("token_invalid")._value.get() == 0
    finally:
        await refused.stop()
    device = harness.bridge.registry.get(creds.device_id)  # an expired token is no use of the next key
    assert device is not None and device.next_public_key == public_key_pem(new.private_pem)
    # Its first use, on the clock put right; then the old key's expired token is the replaced key's.
    assert (await harness.device_status(new))[0] == 200
    stale = sign_device_token(creds.private_pem, creds.device_id, an_hour_ago, lifetime_s=600, audience="cloud-bridge")
    status, body = await harness.device_status(creds, token=stale)
    assert (status, body["error"]) == (401, "key_replaced")


async def test_a_rotation_signed_with_the_replaced_key_is_told_so(harness: Harness) -> None:
    """A device restored from a backup made before its rotation runs rotate-key to get going again: it was told
    403 `rotation_refused`, "the rotation does not verify for this device" (a forgery's answer), while its
    connects were refused `key_replaced` and `/v1/device` told it so."""
    creds = await harness.enroll()
    new, document = creds.rotated()
    assert (await harness.post("/v1/rotate-key", document))[0] == 200
    assert (await harness.device_status(new))[0] == 200  # the switch
    _, from_backup = creds.rotated()  # the old identity, restored, proposes a key of its own
    status, body = await harness.post("/v1/rotate-key", from_backup)
    assert (status, body["error"]) == (403, "key_replaced")
    assert "replaced" in body["detail"] and "enroll again" in body["detail"]
    device = harness.bridge.registry.get(creds.device_id)
    assert device is not None and device.next_public_key is None
    # A stranger's signature is still told nothing.
    _, forged = Creds(creds.device_id, generate_private_key_pem()).rotated()
    status, body = await harness.post("/v1/rotate-key", forged)
    assert (status, body["error"]) == (403, "rotation_refused")
