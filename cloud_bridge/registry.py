"""The device registry: enrolled devices, one-time enrollment codes, revocation, in SQLite.

Used by the CLI (another process) and by the running bridge; SQLite's locking makes the two safe
together. Codes are stored only as SHA-256 hashes: they carry 192 random bits, so a fast hash is
enough. Calls are short and synchronous; async callers run them with asyncio.to_thread.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from cloud_bridge.errors import AuthError, BridgeError
from cloud_bridge.tokens import load_device_public_key
from intent_contract.ids import IdGenerator
from intent_contract.names import is_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS devices_key ON devices(key_fingerprint);
CREATE TABLE IF NOT EXISTS enroll_codes (
    code_hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    device_id TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revocations', 0);
"""


@dataclass(frozen=True, slots=True)
class Device:
    """An enrolled device."""

    device_id: str
    tenant: str
    name: str
    public_key: str
    enrolled_at: float
    revoked_at: float | None = None

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
        }


class UnknownDeviceError(BridgeError):
    """No device with that id."""

    code = "unknown_device"


def hash_code(code: str) -> str:
    """The stored form of an enrollment code."""
    return hashlib.sha256(code.encode()).hexdigest()


def _fingerprint(public_key_pem: str) -> str:
    der = load_device_public_key(public_key_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _device(row: sqlite3.Row) -> Device:
    return Device(
        device_id=row["device_id"],
        tenant=row["tenant"],
        name=row["name"],
        public_key=row["public_key"],
        enrolled_at=row["enrolled_at"],
        revoked_at=row["revoked_at"],
    )


class Registry:
    """Devices and enrollment codes in one SQLite file."""

    def __init__(self, path: Path, *, new_id: Callable[[], str] | None = None) -> None:
        self.path = path
        self._new_id = new_id or IdGenerator(lambda: int(time.time() * 1000), secrets.token_bytes).new

    def open(self) -> None:
        """Create the file and tables if needed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(self.path, timeout=10)) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)  # commits by itself
        except sqlite3.Error as exc:
            raise BridgeError(f"device registry {self.path}: {exc}", code="registry_error") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BridgeError(f"device registry {self.path}: {exc}", code="registry_error") from exc

    def create_code(self, tenant: str, name: str, ttl: float, now: float) -> str:
        """A new one-time enrollment code for device `name` of `tenant`; only its hash is stored."""
        if not is_name(tenant) or not is_name(name):
            raise BridgeError("tenant and name must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", code="bad_name")
        if ttl <= 0:
            raise BridgeError("ttl must be positive", code="bad_ttl")
        code = secrets.token_urlsafe(24)
        with self._tx() as db:
            db.execute(
                "INSERT INTO enroll_codes (code_hash, tenant, name, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (hash_code(code), tenant, name, now, now + ttl),
            )
        return code

    def redeem(self, code: str, public_key_pem: str, now: float) -> Device:
        """Enroll a device with a one-time code, atomically; AuthError('enroll_refused') when not allowed."""
        fingerprint = _fingerprint(public_key_pem)  # raises AuthError('bad_public_key')
        device_id = self._new_id()
        with self._tx() as db:
            row = db.execute(
                "SELECT tenant, name FROM enroll_codes WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
                (hash_code(code), now),
            ).fetchone()
            if row is None:
                raise AuthError("enrollment code unknown, used or expired", code="enroll_refused")
            revoked = db.execute(
                "SELECT 1 FROM devices WHERE key_fingerprint = ? AND revoked_at IS NOT NULL", (fingerprint,)
            ).fetchone()
            if revoked is not None:
                raise AuthError("this public key belongs to a revoked device", code="enroll_refused")
            db.execute(
                "UPDATE enroll_codes SET used_at = ?, device_id = ? WHERE code_hash = ?",
                (now, device_id, hash_code(code)),
            )
            db.execute(
                "INSERT INTO devices (device_id, tenant, name, public_key, key_fingerprint, enrolled_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, row["tenant"], row["name"], public_key_pem, fingerprint, now),
            )
        return Device(device_id, row["tenant"], row["name"], public_key_pem, now)

    def get(self, device_id: str) -> Device | None:
        """The device, revoked or not, or None."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else _device(row)

    def all_devices(self) -> list[Device]:
        """Every device, oldest first."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM devices ORDER BY enrolled_at, device_id").fetchall()
        return [_device(r) for r in rows]

    def revoke(self, device_id: str, now: float) -> Device:
        """Revoke a device for good; bumps the revocation counter that running bridges watch."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                raise UnknownDeviceError(f"no device {device_id!r}")
            if row["revoked_at"] is None:
                db.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ?", (now, device_id))
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocations'")
            row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return _device(row)

    def revocation_counter(self) -> int:
        """A number that grows with every revocation: cheap to poll."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'revocations'").fetchone()
        return int(row["value"])

    def revoked_ids(self) -> set[str]:
        """Ids of every revoked device."""
        with self._tx() as db:
            rows = db.execute("SELECT device_id FROM devices WHERE revoked_at IS NOT NULL").fetchall()
        return {r["device_id"] for r in rows}

    def counts(self) -> dict[str, int]:
        """Active and revoked device counts."""
        with self._tx() as db:
            row = db.execute(
                "SELECT COUNT(*) - COUNT(revoked_at) AS active, COUNT(revoked_at) AS revoked FROM devices"
            ).fetchone()
        return {"active": int(row["active"]), "revoked": int(row["revoked"])}
