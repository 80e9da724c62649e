"""Enrollment over HTTPS: one-time codes, expiry, concurrent redemption, revoked keys."""

from __future__ import annotations

import asyncio
import time

from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.integration.test_bridge_harness import Harness, counting, harness

__all__ = ["counting", "harness"]


async def test_code_works_once_then_403(harness: Harness) -> None:
    code = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    status, body = await harness.post_enroll(code, public_key_pem(generate_private_key_pem()))
    assert status == 201
    assert body["tenant"] == "acme"
    assert body["name"] == "boiler-7"
    assert body["mqtt_port"] == harness.mqtt_port
    assert body["audience"] == "cloud-bridge"
    assert harness.bridge.registry.get(body["device_id"]) is not None
    status, body = await harness.post_enroll(code, public_key_pem(generate_private_key_pem()))
    assert status == 403
    assert body["error"] == "enroll_refused"
    assert len(harness.bridge.registry.all_devices()) == 1


async def test_expired_and_unknown_codes_are_403(harness: Harness) -> None:
    expired = harness.bridge.registry.create_code("acme", "boiler-7", 5, time.time() - 10)
    status, _ = await harness.post_enroll(expired, public_key_pem(generate_private_key_pem()))
    assert status == 403
    status, _ = await harness.post_enroll("no-such-code", public_key_pem(generate_private_key_pem()))
    assert status == 403
    assert harness.bridge.registry.all_devices() == []


async def test_concurrent_double_redeem_enrolls_exactly_one_device(harness: Harness) -> None:
    code = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    keys = [public_key_pem(generate_private_key_pem()) for _ in range(6)]
    results = await asyncio.gather(*(harness.post_enroll(code, key) for key in keys))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 403, 403, 403, 403, 403]
    assert len(harness.bridge.registry.all_devices()) == 1


async def test_a_revoked_devices_key_cannot_enroll_again(harness: Harness) -> None:
    private = generate_private_key_pem()
    code = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    status, body = await harness.post_enroll(code, public_key_pem(private))
    assert status == 201
    harness.bridge.registry.revoke(body["device_id"], time.time())
    again = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    status, _ = await harness.post_enroll(again, public_key_pem(private))
    assert status == 403
