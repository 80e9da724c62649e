"""The device registry and the token replay cache on PostgreSQL, shared by every bridge node.

A code is redeemed by one UPDATE that only matches an unused, unexpired code: the row lock makes a
second node's redeem wait and then match nothing, so a code enrolls exactly one device. The replay
cache is a table keyed by (device, jti); a per-device advisory lock makes its per-device bound exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from cloud_bridge.errors import AuthError
from cloud_bridge.ledger_states import FINAL_STATES, state_in
from cloud_bridge.registry import (
    REPLACED_KEYS_KEPT,
    Device,
    UnknownDeviceError,
    active_keys_of,
    check_code_request,
    checked_key,
    hash_code,
    key_id_text,
    key_id_value,
    new_code,
    new_id,
)
from cloud_bridge.store.pg_pools import PgPools
from cloud_bridge.tokens import LEEWAY_S, TokenClaims, replay_refusal
from intent_contract.names import is_name

_SETTLE_FINAL = (
    "UPDATE intents SET confirmed = true, announce = false"
    f" WHERE device_id = %s AND NOT confirmed AND {state_in(FINAL_STATES)}"
)
_SWEEP_EVERY = 60.0  # seconds between deletions of every expired replay entry (each device prunes its own)
# Each node prunes by its own clock, and each takes a token until exp + leeway by its own clock: an entry is
# deleted only this long after that, so a node whose clock is up to this far behind the pruning one still
# finds it (without it, a node 5 s ahead let a token be replayed on the other for 5 s).
NODE_CLOCK_SKEW_S = 30.0


def _device(row: dict[str, Any]) -> Device:
    return Device(
        device_id=row["device_id"],
        tenant=row["tenant"],
        name=row["name"],
        public_key=row["public_key"],
        enrolled_at=row["enrolled_at"],
        revoked_at=row["revoked_at"],
        next_public_key=row.get("next_public_key"),
    )


class PgRegistry:
    """The Registry protocol on PostgreSQL (synchronous, on the node's small sync pool)."""

    def __init__(self, pools: PgPools, *, new_id: Callable[[], str] = new_id) -> None:
        self._pools = pools
        self._new_id = new_id

    def __repr__(self) -> str:
        return "PgRegistry()"

    def open(self) -> None:
        """Open the sync pool (the schema is the store's migrations)."""
        self._pools.open_sync()

    def close(self) -> None:
        self._pools.close_sync()

    def create_code(self, tenant: str, name: str, ttl: float, now: float) -> str:
        """A new one-time enrollment code for device `name` of `tenant`; only its hash is stored."""
        check_code_request(tenant, name, ttl)
        code = new_code()
        with self._pools.sync_transaction("device registry") as db:
            db.execute(
                "INSERT INTO enroll_codes (code_hash, tenant, name, created_at, expires_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (hash_code(code), tenant, name, now, now + ttl),
            )
        return code

    def redeem(self, code: str, public_key_pem: str, now: float) -> Device:
        """Enroll a device with a one-time code, atomically across nodes; AuthError('enroll_refused')."""
        public_key_pem, key = checked_key(public_key_pem)  # raises AuthError('bad_public_key')
        device_id = self._new_id()
        with self._pools.sync_transaction("device registry") as db:
            row = db.execute(
                "UPDATE enroll_codes SET used_at = %s, device_id = %s"
                " WHERE code_hash = %s AND used_at IS NULL AND expires_at > %s RETURNING tenant, name",
                (now, device_id, hash_code(code), now),
            ).fetchone()
            if row is None:
                raise AuthError("enrollment code unknown, used or expired", code="enroll_refused")
            revoked = db.execute(
                "SELECT 1 FROM devices WHERE key_fingerprint = %s AND revoked_at IS NOT NULL", (key,)
            ).fetchone()
            if revoked is not None:  # raising rolls the code back to unused
                raise AuthError("this public key belongs to a revoked device", code="enroll_refused")
            db.execute(
                "INSERT INTO devices (device_id, tenant, name, public_key, key_fingerprint, enrolled_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (device_id, row["tenant"], row["name"], public_key_pem, key, now),
            )
        return Device(device_id, row["tenant"], row["name"], public_key_pem, now)

    def redeemed(self, code: str, public_key_pem: str) -> Device | None:
        """The device `code` enrolled, when this is its key now and it is not revoked; else None."""
        try:
            _, key = checked_key(public_key_pem)
        except AuthError:
            return None
        with self._pools.sync_transaction("device registry") as db:
            row = db.execute(
                "SELECT d.* FROM enroll_codes c JOIN devices d ON d.device_id = c.device_id WHERE c.code_hash = %s"
                " AND c.used_at IS NOT NULL AND d.key_fingerprint = %s AND d.revoked_at IS NULL",
                (hash_code(code), key),
            ).fetchone()
        return None if row is None else _device(row)

    def get(self, device_id: str) -> Device | None:
        """The device, revoked or not, or None (also for what cannot be a device id: ids come from outside)."""
        if not is_name(device_id):
            return None
        with self._pools.sync_transaction("device registry") as db:
            row = db.execute("SELECT * FROM devices WHERE device_id = %s", (device_id,)).fetchone()
        return None if row is None else _device(row)

    def all_devices(self) -> list[Device]:
        """Every device, oldest first."""
        with self._pools.sync_transaction("device registry") as db:
            rows = db.execute("SELECT * FROM devices ORDER BY enrolled_at, device_id").fetchall()
        return [_device(r) for r in rows]

    def revoke(self, device_id: str, now: float) -> Device:
        """Revoke a device for good; bumps the revocation counter every node watches."""
        with self._pools.sync_transaction("device registry") as db:
            changed = db.execute(
                "UPDATE devices SET revoked_at = %s WHERE device_id = %s AND revoked_at IS NULL", (now, device_id)
            ).rowcount
            if changed:
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocations'")
                # Its final results no edge will ever confirm (it cannot connect, and a revoked device's receipt
                # carries none): settled, so that retention deletes them in time like any other result. Those
                # still running are settled by their finish (`pg_jobs`), the queued end unrun (`before_run`).
                db.execute(_SETTLE_FINAL, (device_id,))
            row = db.execute("SELECT * FROM devices WHERE device_id = %s", (device_id,)).fetchone()
        if row is None:
            raise UnknownDeviceError(f"no device {device_id!r}")
        return _device(row)

    def propose_key(self, device_id: str, public_key_pem: str, now: float) -> Device:
        public_key_pem, key = checked_key(public_key_pem)
        with self._pools.sync_transaction("device registry") as db:
            row = db.execute("SELECT * FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)).fetchone()
            if row is None:
                raise UnknownDeviceError(f"no device {device_id!r}")
            if row["revoked_at"] is not None:
                raise AuthError("device is revoked", code="device_revoked")
            if db.execute("SELECT 1 FROM devices WHERE key_fingerprint = %s", (key,)).fetchone() is not None:
                raise AuthError("this key is already some device's key", code="key_in_use")
            row = db.execute(
                "UPDATE devices SET next_public_key = %s WHERE device_id = %s RETURNING *", (public_key_pem, device_id)
            ).fetchone()
        assert row is not None
        return _device(row)

    def promote_key(self, device_id: str, public_key_pem: str, now: float) -> Device | None:
        public_key_pem, key = checked_key(public_key_pem)
        with self._pools.sync_transaction("device registry") as db:
            old = db.execute("SELECT public_key FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)).fetchone()
            row = db.execute(
                "UPDATE devices SET public_key = next_public_key, key_fingerprint = %s, next_public_key = NULL"
                " WHERE device_id = %s AND next_public_key = %s AND revoked_at IS NULL RETURNING *",
                (key, device_id, public_key_pem),
            ).fetchone()
            if row is not None and old is not None:  # the old key ended: every node ends its sessions (revocations.py)
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revocations'")
                db.execute(
                    "INSERT INTO replaced_keys (device_id, public_key, replaced_at) VALUES (%s, %s, %s)",
                    (device_id, old["public_key"], now),
                )
                db.execute(
                    "DELETE FROM replaced_keys WHERE device_id = %s AND ctid NOT IN (SELECT ctid FROM replaced_keys"
                    " WHERE device_id = %s ORDER BY replaced_at DESC LIMIT %s)",
                    (device_id, device_id, REPLACED_KEYS_KEPT),
                )
        return None if row is None else _device(row)

    def replaced_keys(self, device_id: str) -> list[tuple[str, float]]:
        """Keys the device's rotations replaced, with when, newest first."""
        with self._pools.sync_transaction("device registry") as db:
            rows = db.execute(
                "SELECT public_key, replaced_at FROM replaced_keys WHERE device_id = %s"
                " ORDER BY replaced_at DESC LIMIT %s",
                (device_id, REPLACED_KEYS_KEPT),
            ).fetchall()
        return [(r["public_key"], r["replaced_at"]) for r in rows]

    def revocation_counter(self) -> int:
        """A number that grows with every revocation and key promotion: cheap to poll."""
        with self._pools.sync_transaction("device registry") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'revocations'").fetchone()
        return 0 if row is None else int(row["value"])

    def offline_key_id(self, key_id: str | None) -> str | None:
        """The offline keys' id every node of this store uses, recorded by the first to ask with one."""
        with self._pools.sync_transaction("device registry") as db:
            if key_id is not None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('offline_keys', %s) ON CONFLICT (key) DO NOTHING",
                    (key_id_value(key_id),),
                )
            row = db.execute("SELECT value FROM meta WHERE key = 'offline_keys'").fetchone()
        return None if row is None else key_id_text(int(row["value"]))

    def revoked_ids(self) -> set[str]:
        """Ids of every revoked device."""
        with self._pools.sync_transaction("device registry") as db:
            rows = db.execute("SELECT device_id FROM devices WHERE revoked_at IS NOT NULL").fetchall()
        return {r["device_id"] for r in rows}

    def active_keys(self, device_ids: Collection[str]) -> dict[str, tuple[str, ...]]:
        """The keys that authenticate each of these unrevoked devices now (its key, a proposed next key)."""
        with self._pools.sync_transaction("device registry") as db:
            rows = db.execute(
                "SELECT device_id, public_key, next_public_key FROM devices"
                " WHERE revoked_at IS NULL AND device_id = ANY(%s)",
                (list(device_ids),),
            ).fetchall()
        return active_keys_of(rows)

    def counts(self) -> dict[str, int]:
        """Active and revoked device counts."""
        with self._pools.sync_transaction("device registry") as db:
            row = db.execute(
                "SELECT count(*) - count(revoked_at) AS active, count(revoked_at) AS revoked FROM devices"
            ).fetchone()
        assert row is not None
        return {"active": int(row["active"]), "revoked": int(row["revoked"])}


class PgReplayCache:
    """The ReplayCache in the `token_replay` table: a token opens one session on any node."""

    def __init__(
        self,
        pools: PgPools,
        *,
        per_device: int,
        leeway: float = LEEWAY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pools = pools
        self.per_device = per_device
        self.leeway = leeway
        self._clock = clock
        self._swept = float("-inf")

    async def check_and_add(self, claims: TokenClaims, now: float) -> None:
        """Record the token; AuthError 'token_replayed' or 'too_many_tokens' (see `ReplayCache`)."""
        sweep = self._clock() - self._swept >= _SWEEP_EVERY
        async with self._pools.transaction("token replay cache") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (claims.device_id,))
            forget = now - NODE_CLOCK_SKEW_S
            if sweep:
                await conn.execute("DELETE FROM token_replay WHERE until < %s", (forget,))
            else:
                await conn.execute(
                    "DELETE FROM token_replay WHERE device_id = %s AND until < %s", (claims.device_id, forget)
                )
            # Live by this node's clock: the entries kept longer for the other nodes do not count against the bound.
            cursor = await conn.execute(
                "SELECT count(*) FILTER (WHERE until >= %s) AS live, count(*) FILTER (WHERE jti = %s) AS seen"
                " FROM token_replay WHERE device_id = %s",
                (now, claims.jti, claims.device_id),
            )
            row = await cursor.fetchone()
            assert row is not None
            refusal = replay_refusal(seen=bool(row["seen"]), device_live=int(row["live"]), per_device=self.per_device)
            if refusal is None:
                await conn.execute(
                    "INSERT INTO token_replay (device_id, jti, until) VALUES (%s, %s, %s)",
                    (claims.device_id, claims.jti, claims.exp + self.leeway),
                )
        if sweep:
            self._swept = self._clock()
        if refusal is not None:
            raise refusal
