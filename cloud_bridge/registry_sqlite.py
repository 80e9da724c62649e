"""The device registry on SQLite (`registry.db` in the data directory): the single-node store.

Used by the CLI (another process) and by the running bridge; SQLite's locking makes the two safe
together. Calls are short and synchronous; async callers run them with own_threads.own_thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from cloud_bridge.errors import AuthError, SchemaError, TransientError
from cloud_bridge.registry import (
    KEYS_CHUNK,
    REPLACED_KEYS_KEPT,
    Device,
    UnknownDeviceError,
    active_keys_of,
    check_code_request,
    checked_key,
    hash_code,
    new_code,
    new_id,
)
from intent_contract.names import is_name
from intent_contract.sqlite_wal import use_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    revoked_at REAL,
    next_public_key TEXT
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
CREATE TABLE IF NOT EXISTS replaced_keys (
    device_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    replaced_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS replaced_keys_device ON replaced_keys(device_id, replaced_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revocations', 0);
"""

# The file's user_version: its schema above (key rotation's column included). A file a newer bridge left at a
# higher one is refused, as the ledger and fleet.db are: it was taken as this bridge's and written to.
REGISTRY_VERSION = 1


def _device(row: sqlite3.Row) -> Device:
    return Device(
        device_id=row["device_id"],
        tenant=row["tenant"],
        name=row["name"],
        public_key=row["public_key"],
        enrolled_at=row["enrolled_at"],
        revoked_at=row["revoked_at"],
        next_public_key=row["next_public_key"],
    )


class SqliteRegistry:
    """The Registry protocol on one SQLite file."""

    def __init__(self, path: Path, *, new_id: Callable[[], str] = new_id) -> None:
        self.path = path
        self._new_id = new_id

    def __repr__(self) -> str:
        return f"SqliteRegistry({str(self.path)!r})"

    def open(self) -> None:
        """Create the file and tables if needed; SchemaError for a file a newer bridge made (REGISTRY_VERSION)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
                self._refuse_newer(db)
                use_wal(db)
                db.executescript(_SCHEMA)  # IF NOT EXISTS, OR IGNORE: the same whoever runs it first
                if not self._has_next_key(db) or self._version(db) < REGISTRY_VERSION:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        # Again under the write lock: another process opening the file may have added it meanwhile.
                        self._refuse_newer(db)
                        if not self._has_next_key(db):  # a registry made before key rotation
                            db.execute("ALTER TABLE devices ADD COLUMN next_public_key TEXT")
                        db.execute(f"PRAGMA user_version = {REGISTRY_VERSION:d}")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise TransientError(f"device registry {self.path}: {exc}", code="registry_error") from exc

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_newer(self, db: sqlite3.Connection) -> None:
        if (found := self._version(db)) > REGISTRY_VERSION:
            raise SchemaError(
                f"the SQLite device registry ({self.path}) has schema version {found}, newer than this bridge knows"
                f" ({REGISTRY_VERSION}); upgrade the bridge"
            )

    @staticmethod
    def _has_next_key(db: sqlite3.Connection) -> bool:
        return "next_public_key" in {r[1] for r in db.execute("PRAGMA table_info(devices)")}

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own connection."""

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
            raise TransientError(f"device registry {self.path}: {exc}", code="registry_error") from exc

    def create_code(self, tenant: str, name: str, ttl: float, now: float) -> str:
        """A new one-time enrollment code for device `name` of `tenant`; only its hash is stored."""
        check_code_request(tenant, name, ttl)
        code = new_code()
        with self._tx() as db:
            db.execute(
                "INSERT INTO enroll_codes (code_hash, tenant, name, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (hash_code(code), tenant, name, now, now + ttl),
            )
        return code

    def redeem(self, code: str, public_key_pem: str, now: float) -> Device:
        """Enroll a device with a one-time code, atomically; AuthError('enroll_refused') when not allowed."""
        public_key_pem, key = checked_key(public_key_pem)  # raises AuthError('bad_public_key')
        device_id = self._new_id()
        with self._tx() as db:
            row = db.execute(
                "SELECT tenant, name FROM enroll_codes WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?",
                (hash_code(code), now),
            ).fetchone()
            if row is None:
                raise AuthError("enrollment code unknown, used or expired", code="enroll_refused")
            revoked = db.execute(
                "SELECT 1 FROM devices WHERE key_fingerprint = ? AND revoked_at IS NOT NULL", (key,)
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
                (device_id, row["tenant"], row["name"], public_key_pem, key, now),
            )
        return Device(device_id, row["tenant"], row["name"], public_key_pem, now)

    def redeemed(self, code: str, public_key_pem: str) -> Device | None:
        """The device `code` enrolled, when this is its key now and it is not revoked; else None."""
        try:
            _, key = checked_key(public_key_pem)
        except AuthError:
            return None
        with self._tx() as db:
            row = db.execute(
                "SELECT d.* FROM enroll_codes c JOIN devices d ON d.device_id = c.device_id WHERE c.code_hash = ?"
                " AND c.used_at IS NOT NULL AND d.key_fingerprint = ? AND d.revoked_at IS NULL",
                (hash_code(code), key),
            ).fetchone()
        return None if row is None else _device(row)

    def get(self, device_id: str) -> Device | None:
        """The device, revoked or not, or None (also for what cannot be a device id: ids come from outside)."""
        if not is_name(device_id):
            return None
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

    def propose_key(self, device_id: str, public_key_pem: str, now: float) -> Device:
        public_key_pem, key = checked_key(public_key_pem)
        with self._tx() as db:
            row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                raise UnknownDeviceError(f"no device {device_id!r}")
            if row["revoked_at"] is not None:
                raise AuthError("device is revoked", code="device_revoked")
            if db.execute("SELECT 1 FROM devices WHERE key_fingerprint = ?", (key,)).fetchone() is not None:
                raise AuthError("this key is already some device's key", code="key_in_use")
            db.execute("UPDATE devices SET next_public_key = ? WHERE device_id = ?", (public_key_pem, device_id))
            row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return _device(row)

    def promote_key(self, device_id: str, public_key_pem: str, now: float) -> Device | None:
        public_key_pem, key = checked_key(public_key_pem)
        with self._tx() as db:
            old = db.execute("SELECT public_key FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            changed = db.execute(
                "UPDATE devices SET public_key = next_public_key, key_fingerprint = ?, next_public_key = NULL"
                " WHERE device_id = ? AND next_public_key = ? AND revoked_at IS NULL",
                (key, device_id, public_key_pem),
            ).rowcount
            if changed:  # the old key ended: running bridges end the sessions it opened (revocations.py)
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocations'")
                db.execute(
                    "INSERT INTO replaced_keys (device_id, public_key, replaced_at) VALUES (?, ?, ?)",
                    (device_id, old["public_key"], now),
                )
                db.execute(
                    "DELETE FROM replaced_keys WHERE device_id = ? AND rowid NOT IN (SELECT rowid FROM replaced_keys"
                    " WHERE device_id = ? ORDER BY replaced_at DESC, rowid DESC LIMIT ?)",
                    (device_id, device_id, REPLACED_KEYS_KEPT),
                )
            row = db.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return _device(row) if changed else None

    def replaced_keys(self, device_id: str) -> list[tuple[str, float]]:
        """Keys the device's rotations replaced, with when, newest first."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT public_key, replaced_at FROM replaced_keys WHERE device_id = ?"
                " ORDER BY replaced_at DESC, rowid DESC LIMIT ?",
                (device_id, REPLACED_KEYS_KEPT),
            ).fetchall()
        return [(r["public_key"], r["replaced_at"]) for r in rows]

    def revocation_counter(self) -> int:
        """A number that grows with every revocation and key promotion: cheap to poll."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'revocations'").fetchone()
        return int(row["value"])

    def offline_key_id(self, key_id: str | None) -> str | None:
        """`key_id`: one bridge runs on a data dir's store, and its keys are in that data dir (lost, a node of its
        own would refuse to start at all, its online devices with it, for what only its offline sites need)."""
        return key_id

    def revoked_ids(self) -> set[str]:
        """Ids of every revoked device."""
        with self._tx() as db:
            rows = db.execute("SELECT device_id FROM devices WHERE revoked_at IS NOT NULL").fetchall()
        return {r["device_id"] for r in rows}

    def active_keys(self, device_ids: Collection[str]) -> dict[str, tuple[str, ...]]:
        """The keys that authenticate each of these unrevoked devices now (its key, a proposed next key)."""
        ids = list(device_ids)
        keys: dict[str, tuple[str, ...]] = {}
        with self._tx() as db:
            for start in range(0, len(ids), KEYS_CHUNK):
                chunk = ids[start : start + KEYS_CHUNK]
                rows = db.execute(
                    "SELECT device_id, public_key, next_public_key FROM devices WHERE revoked_at IS NULL"
                    f" AND device_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                keys.update(active_keys_of(rows))
        return keys

    def counts(self) -> dict[str, int]:
        """Active and revoked device counts."""
        with self._tx() as db:
            row = db.execute(
                "SELECT COUNT(*) - COUNT(revoked_at) AS active, COUNT(revoked_at) AS revoked FROM devices"
            ).fetchone()
        return {"active": int(row["active"]), "revoked": int(row["revoked"])}
