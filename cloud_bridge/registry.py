"""The device registry: enrolled devices, one-time enrollment codes, revocation; the contract of every backend.

Codes are stored only as SHA-256 hashes: they carry 192 random bits, so a fast hash is enough. A code
enrolls exactly one device, also when several bridge nodes redeem it at once. Calls are short and
synchronous (the CLI uses them directly); async callers run them with own_threads.own_thread.
Backends: `registry_sqlite.SqliteRegistry` (single node), `store.pg_registry.PgRegistry` (shared).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization

from cloud_bridge.errors import PermanentError, UnknownDeviceError
from cloud_bridge.tokens import load_device_public_key
from intent_contract.ids import IdGenerator
from intent_contract.names import is_name


@dataclass(frozen=True, slots=True)
class Device:
    """An enrolled device."""

    device_id: str
    tenant: str
    name: str
    public_key: str
    enrolled_at: float
    revoked_at: float | None = None
    # A key the device proposed with its current one (key rotation): accepted too until its first
    # use, which makes it the device's key and ends the old one (device_keys.verify_with_device_key).
    next_public_key: str | None = None

    def __post_init__(self) -> None:
        if not (is_name(self.device_id) and is_name(self.tenant) and is_name(self.name)):
            raise ValueError("device id, tenant and name must be valid names")

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "tenant": self.tenant,
            "name": self.name,
            "enrolled_at": self.enrolled_at,
            "revoked_at": self.revoked_at,
            "public_key": self.public_key,
            "next_public_key": self.next_public_key,
        }


__all__ = [
    "KEYS_CHUNK", "REPLACED_KEYS_KEPT", "Device", "Registry", "UnknownDeviceError", "active_keys_of",
    "check_code_request", "checked_key", "hash_code", "new_code", "new_id",
]  # fmt: skip


def hash_code(code: str) -> str:
    """The stored form of an enrollment code."""
    return hashlib.sha256(code.encode()).hexdigest()


def new_code() -> str:
    """A fresh one-time enrollment code (192 random bits)."""
    return secrets.token_urlsafe(24)


new_id = IdGenerator(lambda: int(time.time() * 1000), secrets.token_bytes).new


def check_code_request(tenant: str, name: str, ttl: float) -> None:
    """PermanentError unless tenant and name are valid names and ttl is positive."""
    if not is_name(tenant) or not is_name(name):
        raise PermanentError("tenant and name must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", code="bad_name")
    if ttl <= 0:
        raise PermanentError("ttl must be positive", code="bad_ttl")


REPLACED_KEYS_KEPT = 5  # per device: what a refusal checks to say "replaced" rather than "does not verify"
KEYS_CHUNK = 500  # device ids per query of active_keys (SQLite binds at most 32,766 values)


def active_keys_of(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """`Registry.active_keys` from rows of (device_id, public_key, next_public_key) of unrevoked devices."""
    return {
        r["device_id"]: (r["public_key"],) + ((r["next_public_key"],) if r["next_public_key"] else ()) for r in rows
    }


def checked_key(public_key_pem: str) -> tuple[str, str]:
    """(the key as its own PEM, the SHA-256 of its DER SPKI); AuthError('bad_public_key') when it is not a
    P-256 SPKI PEM.

    The registry keeps the PEM it makes, not the text it was given: the PEM parser passes over text around
    the key (a NUL after its END line, say), which PostgreSQL's text refuses (an HTTP 500 at enrollment)."""
    key = load_device_public_key(public_key_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pem, hashlib.sha256(der).hexdigest()


def revoked_in(registry: Registry) -> Callable[[str], bool]:
    """Whether a device is revoked, as `registry` says now (False for a device it does not know)."""

    def revoked(device_id: str) -> bool:
        device = registry.get(device_id)
        return device is not None and device.revoked_at is not None

    return revoked


def key_id_value(key_id: str) -> int:
    """An offline key id (16 hex digits) as the signed 64-bit integer the stores' `meta` tables hold."""
    return int.from_bytes(bytes.fromhex(key_id), "big", signed=True)


def key_id_text(value: int) -> str:
    return value.to_bytes(8, "big", signed=True).hex()


class Registry(Protocol):
    """Devices and enrollment codes; free of any one database."""

    def open(self) -> None:
        """Create or migrate the tables if needed; call before anything else."""

    def close(self) -> None:
        """Release connections."""

    def create_code(self, tenant: str, name: str, ttl: float, now: float) -> str:
        """A new one-time enrollment code for device `name` of `tenant`; only its hash is stored."""

    def redeem(self, code: str, public_key_pem: str, now: float) -> Device:
        """Enroll a device with a one-time code, atomically; AuthError('enroll_refused') when not allowed."""

    def redeemed(self, code: str, public_key_pem: str) -> Device | None:
        """The device `code` enrolled, when `public_key_pem` is its key now and it is not revoked; else None
        (offline enrollment answers the request that used the code again: its response was lost)."""

    def get(self, device_id: str) -> Device | None:
        """The device, revoked or not, or None."""

    def all_devices(self) -> list[Device]:
        """Every device, oldest first."""

    def revoke(self, device_id: str, now: float) -> Device:
        """Revoke a device for good; bumps the revocation counter that running bridges watch."""

    def propose_key(self, device_id: str, public_key_pem: str, now: float) -> Device:
        """Record the next key of a device (it proved the change with its current key).

        UnknownDeviceError; AuthError `device_revoked` or `key_in_use` (the key is some device's key).
        """

    def promote_key(self, device_id: str, public_key_pem: str, now: float) -> Device | None:
        """Make the proposed key the device's key (its first use); None when it is no longer the proposed one.

        Bumps the revocation counter: the old key ended, and every node ends the sessions it opened. The old key
        is kept (`replaced_keys`) so that what it signs later is refused as replaced, not as forged."""

    def replaced_keys(self, device_id: str) -> list[tuple[str, float]]:
        """Keys the device's rotations replaced, with when, newest first (at most REPLACED_KEYS_KEPT)."""

    def revocation_counter(self) -> int:
        """A number that grows with every revocation and every key promotion (a key ended): cheap to poll."""

    def offline_key_id(self, key_id: str | None) -> str | None:
        """The id of the offline keys this store's bridges use (devices pin them), after recording `key_id` as
        that when none is yet; None when none is and `key_id` is None. A shared store's (PostgreSQL: its nodes
        and operators' machines must all hold the same keys); SQLite's, of one data dir, records none."""

    def revoked_ids(self) -> set[str]:
        """Ids of every revoked device."""

    def active_keys(self, device_ids: Collection[str]) -> dict[str, tuple[str, ...]]:
        """The keys that authenticate each of these devices now (its key, and a proposed next key);
        unknown and revoked devices are left out."""

    def counts(self) -> dict[str, int]:
        """Active and revoked device counts."""
