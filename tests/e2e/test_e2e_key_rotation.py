"""Device key rotation without a visit or an enrollment code: the old key ends at the new one's first use."""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest

from intent_contract import signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem, sign_device_token
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from tests.support.sneakernet import edge_cli
from tests.support.stack import Stack, ids

KEY = "identity/device.key"


def _tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.bridge.certs["ca"]))


def _status_with(stack: Stack, key: bytes) -> int:
    """The HTTP status of `GET /v1/device` with a token signed by `key`."""
    token = sign_device_token(key, stack.device_id, int(time.time()), lifetime_s=120)
    response = httpx.get(
        f"{stack.bridge.url}/v1/device",
        headers={"Authorization": f"Bearer {token}"},
        verify=_tls(stack),
        timeout=15,
    )
    return response.status_code


def _device(stack: Stack) -> dict[str, object]:
    shown: dict[str, object] = json.loads(stack.bridge.cli("devices", "show", stack.device_id, "--json"))
    return shown


@pytest.mark.timeout(240)
def test_a_device_rotates_its_key_and_the_old_one_ends_at_the_new_ones_first_use(stack: Stack) -> None:
    edge = stack.start_edge()
    app = stack.app(subscribe=False)
    before = ids("before-rotation", 20)
    stack.publish_all(app, before)
    stack.wait_delivered(before, 60)
    old_key = (stack.edge_dir / KEY).read_bytes()

    result = edge_cli(stack.edge_dir, "rotate-key")  # while the outbox runs, online
    assert result.returncode == 0, result.stderr
    new_key = (stack.edge_dir / KEY).read_bytes()
    assert new_key != old_key
    assert _device(stack)["next_public_key"] == public_key_pem(new_key)
    assert _status_with(stack, old_key) == 200, "the old key ended before the new one was used"

    edge.stop()
    stack.start_edge()  # connects with the new key: its first use
    after = ids("after-rotation", 20)
    stack.publish_all(app, after)
    stack.wait_delivered(after, 60)
    device = _device(stack)
    assert device["public_key"] == public_key_pem(new_key)
    assert device["next_public_key"] is None
    assert _status_with(stack, old_key) == 401
    assert _status_with(stack, new_key) == 200
    assert len(json.loads(stack.bridge.cli("devices", "ls", "--json"))) == 1  # the same device, no new enrollment
    assert max(stack.sink.executions().values()) == 1


@pytest.mark.timeout(120)
def test_a_rotation_not_signed_by_the_devices_key_is_refused(stack: Stack) -> None:
    current = (stack.edge_dir / KEY).read_bytes()
    stranger, wanted = generate_private_key_pem(), generate_private_key_pem()
    body = NewKey(stack.device_id, public_key_pem(wanted), int(time.time() * 1000)).encode()
    by_wanted = signed.sign(body, wanted, typ=NEW_KEY_TYPE, kid=stack.device_id)
    by_stranger = signed.sign(body, stranger, typ=NEW_KEY_TYPE, kid=stack.device_id)
    # Proposed by a stranger's key; or by the device's key for a new key that did not sign (no proof of possession).
    for inner, outer_key in ((by_wanted, stranger), (by_stranger, current)):
        payload = signed.sign(inner, outer_key, typ=KEY_ROTATION_TYPE, kid=stack.device_id)
        response = httpx.post(f"{stack.bridge.url}/v1/rotate-key", content=payload, verify=_tls(stack), timeout=15)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "rotation_refused"
    assert _device(stack)["next_public_key"] is None
    assert _status_with(stack, current) == 200
