"""The bridge's side of a device key rotation (cloud_bridge/device_keys.py), against every store backend."""

from __future__ import annotations

import pytest

from cloud_bridge.device_keys import accept_rotation
from cloud_bridge.errors import AuthError
from cloud_bridge.store import Store
from intent_contract import signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from tests.support.stores import store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0


def rotation(device_id: str, current: bytes, proposed: bytes) -> bytes:
    """What `edge-outbox rotate-key` sends: the proposed key signed by itself, inside the current key's signature."""
    body = NewKey(device_id, public_key_pem(proposed), int(NOW * 1000)).encode()
    inner = signed.sign(body, proposed, typ=NEW_KEY_TYPE, kid=device_id)
    return signed.sign(inner, current, typ=KEY_ROTATION_TYPE, kid=device_id)


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
    assert refused.value.code == "rotation_forged"
