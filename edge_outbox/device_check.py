"""`GET /v1/device` on the bridge: is this device revoked, and what time is it there.

Asked when the bridge refuses a CONNECT: the answer tells "revoked" (end the backlog) from a passing
fault (keep trying), and every answer, a refusal of our token included, carries the bridge's time,
from which a device with a wrong clock learns how far off it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edge_outbox.bridge_access import ANSWER_LIMIT, client_tls_context, device_token
from edge_outbox.bridge_clock import BridgeClock, TimeSample
from edge_outbox.bridge_pins import BridgePins
from edge_outbox.errors import ConfigError
from edge_outbox.identity import Identity
from intent_contract import json_bounded
from intent_contract.errors import DecodeError


@dataclass(frozen=True, slots=True)
class DeviceAnswer:
    revoked: bool
    time: TimeSample | None  # None: the bridge did not answer, or gave no time
    # The token verified with a key this device's key rotation replaced: another copy of this device rotated
    # (a cloned or restored data dir), and this one cannot connect with the key it has.
    key_replaced: bool = False
    # The bridge's offline keys, when it gives them (a bridge before offline bundles gives none).
    pins: BridgePins | None = None


async def check_device(
    data_dir: Path, identity: Identity, local_ms: Callable[[], int], clock: BridgeClock, log: logging.LoggerAdapter[Any]
) -> DeviceAnswer:
    """Ask with a token signed by our key on the clock as learned; no answer is DeviceAnswer(False, None)."""
    try:
        return await ask_device(data_dir, identity, local_ms, clock)
    except (httpx.HTTPError, DecodeError) as exc:
        log.warning("could not ask the bridge whether this device is revoked: %s", exc)
        return DeviceAnswer(False, None)


async def ask_device(
    data_dir: Path, identity: Identity, local_ms: Callable[[], int], clock: BridgeClock
) -> DeviceAnswer:
    """`check_device` without its fallback: httpx.HTTPError or DecodeError when no answer could be read."""
    sent = local_ms()
    token = device_token(data_dir, identity, clock.bridge_ms(sent) // 1000, 120)
    async with httpx.AsyncClient(verify=client_tls_context(data_dir), timeout=15) as http:
        response = await http.get(f"{identity.http_url}/v1/device", headers={"Authorization": f"Bearer {token}"})
    return read_answer(response.content, response.status_code, sent, local_ms(), identity.device_id)


def read_answer(
    content: bytes, status: int, sent_local_ms: int, received_local_ms: int, device_id: str
) -> DeviceAnswer:
    """What an answer of `/v1/device` says of device `device_id`; DecodeError when it is not JSON."""
    body = json_bounded.loads(content, max_bytes=ANSWER_LIMIT)
    if not isinstance(body, dict):
        return DeviceAnswer(False, None)
    # Revoked only when it names this device: a revocation ends the backlog for good, and an answer about
    # another device (a cache in front of the bridge that ignores Authorization, a bridge's bug) ended ours.
    revoked = status == 200 and body.get("status") == "revoked" and body.get("device_id") == device_id
    bridge_ms = body.get("time")
    sample = None
    if type(bridge_ms) is int:
        sample = TimeSample.between(bridge_ms, sent_local_ms, received_local_ms, "bridge /v1/device")
    pins = None
    if status == 200 and body.get("device_id") == device_id and "offline" in body:
        try:
            pins = BridgePins.from_json(body["offline"])
        except ConfigError:  # malformed: none learned (the device keeps asking at its next connection)
            pins = None
    key_replaced = status == 401 and body.get("error") == "key_replaced"
    return DeviceAnswer(revoked, sample, key_replaced=key_replaced, pins=pins)
