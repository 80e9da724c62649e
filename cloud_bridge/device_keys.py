"""A device's keys at the bridge: key rotation, and checking a signature with the key in use.

A device replaces its key pair without a new enrollment code by sending a rotation document: its
next public key, signed with that next key (it holds it), inside a signature of its current key
(the change is the device's own). The registry keeps the next key beside the current one; both are
accepted until the next key's first use (a CONNECT, a `/v1/device` token, a bundle, the next
rotation document), which makes it the device's key and ends the old one. A device that never hears
that its rotation arrived keeps working with its old key and can send the rotation again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from cloud_bridge.errors import AuthError, KeyReplacedError, SignedTokenError, UnknownDeviceError
from cloud_bridge.registry import Device, Registry
from intent_contract import signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.errors import DecodeError, SignatureError
from intent_contract.names import is_name
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from intent_contract.timefmt import format_ms

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ROTATION_BYTES = 16 * 1024


def verify_with_device_key(
    registry: Registry, device: Device, verify: Callable[[str], T], now: Callable[[], float] = time.time
) -> T:
    """`verify(public_key_pem)` with the device's key, else with its proposed next key, whose first use
    makes it the device's key (the old one stops working). Raises KeyReplacedError when it was signed with a key
    a rotation replaced; else what the check of the key that signed it raised (SignedTokenError: a token of the
    next key refused for its claims, an expired one say, is refused as that, not as not verifying with the
    current key); else what the current key's check raised."""
    try:
        return verify(device.public_key)
    except SignedTokenError:
        raise
    except (AuthError, SignatureError):
        signed_by_next: SignedTokenError | None = None
        if device.next_public_key is not None:
            try:
                result = verify(device.next_public_key)
            except SignedTokenError as exc:  # the next key made it: not a use of it (nothing promoted)
                signed_by_next = exc
            except (AuthError, SignatureError):
                pass
            else:
                registry.promote_key(device.device_id, device.next_public_key, now())
                logger.info(
                    "device key rotated: the next key is in use, the old one ends",
                    extra={"device_id": device.device_id},
                )
                return result
        if signed_by_next is not None:
            raise signed_by_next from None
        _refuse_replaced(registry, device, verify)
        raise


@functools.cache
def _decoy_key() -> str:
    """A P-256 public key whose private half nobody holds (dropped as it is made): what is checked for no device."""
    return public_key_pem(generate_private_key_pem())


def refuse_unknown(registry: Registry, device_id: str, verify: Callable[[str], object]) -> None:
    """UnknownDeviceError, after the work a signature that fails costs for a device that exists: a check with a key
    (one nobody holds), a read of the device's replaced keys. An unknown id was refused at once, about 0.9 ms
    sooner on loopback than a real device's forged token: the time told a stranger which ids exist."""
    with contextlib.suppress(AuthError, SignatureError):
        verify(_decoy_key())
    if is_name(device_id):  # as the registry's read: what cannot be a device id is not looked up
        registry.replaced_keys(device_id)  # none: no device has that id
    raise UnknownDeviceError(f"no device {device_id!r}")


def _refuse_replaced(registry: Registry, device: Device, verify: Callable[[str], object]) -> None:
    """KeyReplacedError when `verify` passes with a key the device's rotations replaced: its own old key (a
    bundle made before the switch, a restored backup; or a thief's copy), not a forgery. Only a holder of that
    key learns it, and only what the device knew: that its key was replaced. A token that key made and that is
    refused for its claims as well (expired, say) is still the replaced key's: told so."""
    for key, replaced_at in registry.replaced_keys(device.device_id):
        try:
            verify(key)
        except SignedTokenError:
            pass
        except (AuthError, SignatureError):
            continue
        raise KeyReplacedError(
            f"signed with a key of device {device.device_id} that a key rotation replaced at"
            f" {format_ms(int(replaced_at * 1000))}",
            replaced_at=replaced_at,
        ) from None


def proposed_key(data: bytes) -> str | None:
    """The key a rotation document proposes, read without verifying anything (to name a refused proposal to
    the device that made it); None when it cannot be read."""
    try:
        outer = signed.read(data, typ=KEY_ROTATION_TYPE, max_bytes=MAX_ROTATION_BYTES)
        inner = signed.read(outer.body, typ=NEW_KEY_TYPE, max_bytes=MAX_ROTATION_BYTES)
        return NewKey.decode(inner.body).public_key
    except DecodeError:
        return None


def accept_rotation(registry: Registry, data: bytes, now: float) -> Device:
    """Record the next key a rotation document proposes; AuthError (or UnknownDeviceError) when refused."""
    try:
        outer = signed.read(data, typ=KEY_ROTATION_TYPE, max_bytes=MAX_ROTATION_BYTES)
    except DecodeError as exc:
        raise AuthError(f"not a key rotation document: {exc}", code="rotation_malformed") from None
    device = registry.get(outer.kid)
    if device is None:
        refuse_unknown(registry, outer.kid, lambda key: signed.verify(outer, key))
        raise AssertionError("refuse_unknown raises")  # for the type checker: device is a Device below
    try:
        # A device that switched to its next key and rotates again before using it otherwise signs with
        # the proposed key: that is its first use, like any other (else the device could not rotate
        # again until it had connected).
        outer_body = verify_with_device_key(registry, device, lambda key: signed.verify(outer, key), lambda: now)
        inner = signed.read(outer_body, typ=NEW_KEY_TYPE, max_bytes=MAX_ROTATION_BYTES)
        body = NewKey.decode(inner.body)
        signed.verify(inner, body.public_key)
    except SignatureError:
        raise AuthError(
            "the key rotation is not signed by the device's key and its next key", code="rotation_forged"
        ) from None
    except DecodeError as exc:
        raise AuthError(f"not a key rotation document: {exc}", code="rotation_malformed") from None
    if body.device_id != device.device_id:
        raise AuthError("the key rotation names another device", code="rotation_forged")
    return registry.propose_key(device.device_id, body.public_key, now)
