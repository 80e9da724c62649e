"""Enrollment over HTTPS: one-time codes, expiry, concurrent redemption, revoked keys."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from cloud_bridge.enroll_limits import EnrollLimits
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.bridge import Harness, counting, harness, make_settings, running_bridge

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


async def test_the_same_request_again_gets_the_same_device(harness: Harness) -> None:
    """A device whose answer was lost asks again with its code and key: the code is spent, and a 403 left it
    with no way to enroll but a new code (and a device at the bridge that nobody could use)."""
    code = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    key = public_key_pem(generate_private_key_pem())
    first = await harness.post_enroll(code, key)
    again = await harness.post_enroll(code, key)
    assert first[0] == 201
    assert again[0] == 201
    assert {**again[1], "time": 0} == {**first[1], "time": 0}
    assert [d.device_id for d in harness.bridge.registry.all_devices()] == [first[1]["device_id"]]
    status, body = await harness.post_enroll(code, public_key_pem(generate_private_key_pem()))  # another key
    assert (status, body["error"]) == (403, "enroll_refused")
    harness.bridge.registry.revoke(first[1]["device_id"], time.time())
    status, body = await harness.post_enroll(code, key)  # a revoked device is not answered again
    assert (status, body["error"]) == (403, "enroll_refused")


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


async def test_guessing_is_limited_per_source_address(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloud_bridge.enroll_http")
    key = public_key_pem(generate_private_key_pem())
    burst = int(EnrollLimits().per_address_per_minute)
    for n in range(burst):
        status, _ = await harness.post_enroll(f"guess-{n}", key)
        assert status == 403
    status, body, headers = await harness.enroll_request("guess-x", key)
    assert (status, body["error"]) == (429, "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 60
    code = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    assert (await harness.post_enroll(code, key))[0] == 429  # a right code waits like a wrong one
    assert (await harness.post_enroll(code, key, source="127.0.0.2"))[0] == 201  # another address is not held up
    first = caplog.records[0].getMessage()
    assert first == "enrollment refused from 127.0.0.1: enroll_refused"


async def test_enrollment_is_limited_overall(tmp_path: Path, server_cert_files: dict[str, Path]) -> None:
    settings = make_settings(
        tmp_path, server_cert_files, bridge={"enroll_per_address_per_minute": 100, "enroll_per_minute": 3}
    )
    async for bridge in running_bridge(settings, server_cert_files["ca"], {}):
        key = public_key_pem(generate_private_key_pem())
        statuses = [(await bridge.post_enroll("guess", key, source=f"127.0.0.{n}"))[0] for n in range(1, 6)]
        assert statuses == [403, 403, 403, 429, 429]


async def test_a_code_pasted_with_spaces_or_a_line_end_around_it_enrolls(harness: Harness) -> None:
    """A code copied from a chat or a mail came with a space or a line end around it (`--code " Xy...Q "`, a
    file read whole): 403 "enrollment code unknown, used or expired", and a new code pasted the same way failed
    alike. A code has no whitespace in it (`secrets.token_urlsafe`): what is around it is not part of it."""
    code = harness.bridge.registry.create_code("acme", "boiler-7", 3600, time.time())
    key = public_key_pem(generate_private_key_pem())
    status, body = await harness.post_enroll(f" {code}\r\n", key)
    assert status == 201, body
    again = await harness.post_enroll(f"\u00a0{code}\t", key)  # its answer lost, asked again: the same device
    assert again == (201, {**body, "time": again[1]["time"]})
    status, body = await harness.post_enroll(" \n ", key)
    assert (status, body["error"]) == (400, "malformed")
