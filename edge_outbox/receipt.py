"""`edge-outbox import-receipt`: the bridge's answer to a bundle, applied as its acks would be online.

A receipt is refused unless it is signed with the bridge key this device pinned at enrollment and
names this device. Its acks go through `forward_ops.apply_acks`, the function the forwarder applies MQTT
acks with, so apps get the same statuses (through the events table, published by the running outbox
within a second); a receipt applied twice, or an older one after a newer, changes nothing (final
states never move back). It moves the bridge clock by the bounds it proves, and a receipt saying
the device is revoked ends its backlog as revocation does online.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge_outbox import forward_ops, offline_ops, ops
from edge_outbox.bridge_clock import BridgeClock, TimeSample
from edge_outbox.bridge_pins import load_pins
from edge_outbox.errors import PermanentError
from edge_outbox.identity import identity_dir, load_identity
from intent_contract import signed
from intent_contract.codec import Ack, decode_acks
from intent_contract.errors import DecodeError, SignatureError
from intent_contract.offline_kinds import file_kind, maybe_cut_short
from intent_contract.offline_wire import RECEIPT_TYPE, Receipt


@dataclass(frozen=True, slots=True)
class Applied:
    receipt_id: str
    acks: int
    changed: int  # intents whose state changed
    states: dict[str, int]  # ack states in the receipt
    revoked: bool
    ended: int  # pending intents ended because the device is revoked
    clock: BridgeClock
    key_rotated: bool = False  # the bridge accepted this device's next key: it signs with it from now on
    key_refused: str | None = None  # the bridge refused this device's proposed key for good: why
    corrected_ms: int = 0  # how far this receipt moved the bridge clock (0: it proved nothing new)


def read_receipt(data_dir: Path, data: bytes, max_bytes: int) -> tuple[Receipt, list[Ack]]:
    """The receipt's body and acks, once it is verified as the pinned bridge's word for this device."""
    identity = load_identity(data_dir)
    if identity is None:
        raise PermanentError("not enrolled: this outbox has no device identity to apply a receipt to")
    pins = load_pins(identity_dir(data_dir))
    try:
        document = signed.read(data, typ=RECEIPT_TYPE, max_bytes=max_bytes)
    except DecodeError as exc:
        kind = file_kind(data, max_bytes)
        if kind is not None:  # another file from the stick: said so, not as msgpack's words on its bytes
            raise PermanentError(f"not a receipt: it is {kind}; nothing applied") from None
        if not maybe_cut_short(data):
            raise PermanentError("not a receipt: not an edge-outbox file; nothing applied") from None
        raise PermanentError(
            f"not a readable receipt ({exc}): damaged or cut short (a copy ended early when the stick was pulled"
            " out?); nothing applied: copy it again, or write another at the bridge (`cloud-bridge receipt`)"
        ) from None
    if document.kid != pins.key_id:
        raise PermanentError(
            f"receipt signed by bridge key {document.kid}, but this device pins {pins.key_id}: refused"
        )
    try:
        body = Receipt.decode(signed.verify(document, pins.signing_key))
    except SignatureError:
        raise PermanentError(
            "receipt signature does not verify with the pinned bridge key: forged or altered"
        ) from None
    except DecodeError as exc:
        raise PermanentError(f"receipt body is not readable: {exc}") from None
    if body.device_id != identity.device_id:
        raise PermanentError(f"receipt is meant for device {body.device_id}, this is {identity.device_id}: refused")
    acks: list[Ack] = []
    try:
        for message in body.acks:
            acks.extend(decode_acks(message))
    except DecodeError as exc:
        raise PermanentError(f"receipt acks are not readable: {exc}") from None
    return body, acks


def apply_receipt(conn: sqlite3.Connection, body: Receipt, acks: list[Ack], now: int) -> Applied:
    """Apply a verified receipt in one transaction (a CLI connection in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = forward_ops.apply_acks(conn, acks, now)
        offline_ops.queue_confirms(conn, applied.final_ids)
        echo = body.bundle
        sample = TimeSample.receipt(
            body.made_at,
            now,
            echo.made_at if echo else None,
            echo.imported_at if echo else None,
            f"receipt {body.id}",
        )
        before = offline_ops.bridge_clock(conn)
        clock = offline_ops.learn_time(conn, sample, now)
        ended = 0
        if body.revoked_at is not None:
            offline_ops.mark_revoked(conn, body.device_id, body.revoked_at, f"receipt {body.id}")
            ended = ops.end_revoked(conn, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    states: dict[str, int] = {}
    for ack in acks:
        states[str(ack.state)] = states.get(str(ack.state), 0) + 1
    corrected = clock.offset_ms - before.offset_ms
    return Applied(
        body.id, len(acks), applied.changed, states, body.revoked_at is not None, ended, clock, corrected_ms=corrected
    )
