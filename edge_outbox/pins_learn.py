"""A device enrolled by a bridge before offline bundles existed has no offline keys pinned (`identity/bridge.json`),
and `export` and `import-receipt` refused it for good ("enroll it again", which ends every intent sent as the
device it was). Once connected, such a device asks `GET /v1/device`, whose answer carries the bridge's offline
keys as enrollment does (over the same TLS to the pinned CA, to a token signed by the device's key), and pins
them. Asked once a connection; nothing is pinned over keys already there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.bridge_pins import PINS_FILE, save_pins
from edge_outbox.device_check import ask_device
from edge_outbox.identity import Identity, identity_dir
from intent_contract.errors import DecodeError


def has_pins(data_dir: Path) -> bool:
    return (identity_dir(data_dir) / PINS_FILE).exists()


async def learn_pins(
    data_dir: Path, identity: Identity, local_ms: Callable[[], int], clock: BridgeClock, log: logging.LoggerAdapter[Any]
) -> None:
    """Pin the bridge's offline keys if this device has none and the bridge gives them."""
    if has_pins(data_dir):
        return
    try:
        answer = await ask_device(data_dir, identity, local_ms, clock)
    except (httpx.HTTPError, DecodeError) as exc:
        log.warning("this device has no bridge offline keys pinned, and could not ask the bridge for them: %s", exc)
        return
    if answer.pins is None:
        log.warning(
            "this device has no bridge offline keys pinned and the bridge gives none (a bridge before offline"
            " bundles): `edge-outbox export` cannot make a bundle until it does"
        )
        return
    try:
        save_pins(identity_dir(data_dir), answer.pins)
    except OSError as exc:
        log.warning("could not pin the bridge's offline keys: %s (asked again at the next connection)", exc)
        return
    log.info("pinned the bridge's offline keys (key id %s): this device can now make bundles", answer.pins.key_id)
