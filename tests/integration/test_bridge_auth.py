"""CONNECT authentication and the topic ACL, against a real bridge over verified TLS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt
import pytest

from intent_contract.codec import encode_batch, encode_confirms
from intent_contract.device_token import generate_private_key_pem
from tests.support.bridge import Creds, Harness, counting, email, harness, until

__all__ = ["counting", "harness"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, str], claims: dict[str, object]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(creds: Creds, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": creds.device_id,
        "aud": "cloud-bridge",
        "iat": now,
        "exp": now + 300,
        "jti": hashlib.sha256(repr((now, overrides, time.monotonic())).encode()).hexdigest()[:24],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _public_pem(harness: Harness, creds: Creds) -> str:
    device = harness.bridge.registry.get(creds.device_id)
    assert device is not None
    return device.public_key


def _hs256(harness: Harness, creds: Creds) -> str:
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(creds))
    mac = hmac.new(_public_pem(harness, creds).encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


ATTACKS: dict[str, Callable[[Harness, Creds], str]] = {
    "alg_none": lambda h, c: _unsigned({"alg": "none", "typ": "JWT"}, _claims(c)) + ".",
    "hs256_with_public_key": _hs256,
    "expired": lambda h, c: jwt.encode(
        _claims(c, iat=int(time.time()) - 400, exp=int(time.time()) - 100), c.private_pem, algorithm="ES256"
    ),
    "no_exp": lambda h, c: jwt.encode(_claims(c, exp=None), c.private_pem, algorithm="ES256"),
    "wrong_aud": lambda h, c: c.token(audience="not-the-bridge"),
    "other_devices_key": lambda h, c: jwt.encode(_claims(c), generate_private_key_pem(), algorithm="ES256"),
    "lifetime_over_1h": lambda h, c: jwt.encode(
        _claims(c, exp=int(time.time()) + 3700), c.private_pem, algorithm="ES256"
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_jwt_attacks_are_refused_at_connect(harness: Harness, attack: str) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds, password=ATTACKS[attack](harness, creds))
    try:
        assert not client.accepted, attack
        assert client.connack is not None
        assert client.connack.is_failure
    finally:
        await client.stop()
    # The same device with a good token still gets in: the refusal was about the token.
    good = await harness.connect(creds)
    assert good.accepted
    await good.stop()


async def test_valid_token_accepted_and_replayed_jti_refused(harness: Harness) -> None:
    creds = await harness.enroll()
    token = creds.token()
    first = await harness.connect(creds, password=token)
    assert first.accepted
    await first.stop()
    replay = await harness.connect(creds, password=token)
    assert not replay.accepted
    await replay.stop()


async def test_unknown_and_revoked_devices_are_refused(harness: Harness) -> None:
    creds = await harness.enroll()
    ghost = Creds("01JGHOSTDEVICE000000000000", creds.private_pem)
    client = await harness.connect(ghost)
    assert not client.accepted
    await client.stop()
    harness.bridge.registry.revoke(creds.device_id, time.time())
    client = await harness.connect(creds)
    assert not client.accepted
    await client.stop()


async def test_client_id_must_equal_username(harness: Harness) -> None:
    creds = await harness.enroll()
    other = await harness.enroll(name="boiler-8")
    client = await harness.connect(creds, client_id=other.device_id)
    assert not client.accepted
    await client.stop()


async def test_publishing_under_another_devices_topic_is_refused(harness: Harness) -> None:
    alice, bob = await harness.enroll(name="alice"), await harness.enroll(name="bob")
    client = await harness.connect(alice)
    try:
        assert client.accepted
        client.publish("intents", b"", device_id=bob.device_id)  # wrong device
        client.publish("intents", encode_batch([email("forged-1")]), device_id=bob.device_id)
        client.publish("confirms", encode_confirms(["forged-1"]), device_id=bob.device_id)
        client.publish("acks", b"x")  # the acks topic is bridge -> edge only
        client.mqtt.subscribe(f"devices/{bob.device_id}/acks", qos=1)
        # A later valid batch of alice's own is acked: the refused publishes were processed (and dropped) before.
        client.send([email("own-1")])
        await until(lambda: "own-1" in client.states(), what="alice's own ack")
        await until(lambda: len(client.suback) >= 2, what="suback for bob's topic")
        assert any(reason.is_failure for reason in client.suback)
    finally:
        await client.stop()
    assert await harness.bridge.ledger.audit(device_id=bob.device_id) == []
    assert await harness.bridge.ledger.unconfirmed(bob.device_id) == []
    assert "forged-1" not in client.states()
