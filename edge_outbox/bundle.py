"""`edge-outbox export`: every intent the bridge has not accepted yet, in a bundle for a USB stick.

The bundle carries the MQTT path's own messages (intent batches as the forwarder makes them, and
confirms of the results a receipt brought), in a body signed with this device's key and encrypted
to the bridge's offline key pinned at enrollment: the stick reveals nothing, and nothing on it can
be forged or altered without the bridge refusing it (intent_contract.signed, .sealed).
Times in the envelopes are corrected to the bridge's clock as learned (edge_outbox.bridge_clock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edge_outbox import offline_ops, ops
from edge_outbox.bridge_pins import load_pins
from edge_outbox.db import IntentRow
from edge_outbox.errors import ConfigError, PermanentError
from edge_outbox.forward_wire import encode_rows
from edge_outbox.identity import identity_dir, key_file, load_identity
from edge_outbox.key_rotation import pending_rotation
from intent_contract import sealed, signed
from intent_contract.codec import encode_confirms
from intent_contract.errors import DecodeError
from intent_contract.files import write_atomic
from intent_contract.offline_wire import BUNDLE_TYPE, MAX_BUNDLE_INTENTS, Bundle
from intent_contract.wire import BATCH_ITEMS, BATCH_PAYLOAD_BYTES, CONFIRMS_PER_MESSAGE

# Room kept under --max-bytes for what is neither batches nor confirms: the signature, msgpack's framing,
# age's header and its 16 bytes per 64 KiB chunk (16 KiB for 64 MiB).
_HEADROOM = 2 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Exported:
    bundle_id: str
    intents: int
    confirms: int
    left_out: int  # intents not yet accepted by the bridge that did not fit under --max-bytes
    bytes: int
    unsendable: int = 0  # stored intents the batch cannot carry: ended rejected/bad_json (forward_wire.encode_rows)
    identity_changed: int = 0  # intents sent as the device this data dir was before: ended (offline_ops.send_as)


def export(
    conn: sqlite3.Connection,
    data_dir: Path,
    out: Path,
    *,
    max_bytes: int,
    now: int,
    new_id: Callable[[], str],
    progress: Progress | None = None,
) -> Exported:
    """Write the bundle to `out`; the intents in it are marked sent in the transaction that commits once
    the file is durable, so a bundle that could not be written leaves nothing marked."""
    identity = load_identity(data_dir)
    if identity is None:
        raise PermanentError("not enrolled: enroll this device first (edge-outbox enroll, or enroll-request)")
    pins = load_pins(identity_dir(data_dir))
    if max_bytes <= _HEADROOM:
        raise ConfigError(f"--max-bytes must be over {_HEADROOM >> 20} MiB")
    key = _device_key(data_dir)
    batches: list[bytes] = []
    used = {"bytes": 0, "intents": 0, "unsendable": 0}
    if offline_ops.revocation(conn, identity.device_id) is not None:
        raise PermanentError("this device was revoked at the bridge: there is nothing it may send")
    # One transaction from taking the rows to the file on disk: the rows are marked sent only if the
    # bundle exists, and meanwhile nothing else can cancel or expire a row that is going into it.
    conn.execute("BEGIN IMMEDIATE")
    try:
        sent_as_another = offline_ops.send_as(conn, identity.device_id, now)
        clock = offline_ops.bridge_clock(conn)
        total = offline_ops.pending_count(conn)
        confirms, confirm_messages, room = _confirms(conn, max_bytes)

        def fits(rows: list[IntentRow]) -> bool:
            message, sendable, unsendable = encode_rows(rows, clock)
            if unsendable:
                used["unsendable"] += ops.reject_unsendable(conn, unsendable, now)
            if message is None:
                return True
            if used["bytes"] + len(message) > room:
                return False
            if used["intents"] + len(sendable) > MAX_BUNDLE_INTENTS:
                return False
            batches.append(message)
            used["bytes"] += len(message)
            used["intents"] += len(sendable)
            if progress is not None:
                progress(used["intents"], total)
            return True

        offline_ops.take_for_export(conn, fits=fits, batch_items=BATCH_ITEMS, batch_bytes=BATCH_PAYLOAD_BYTES, now=now)
        left_out = conn.execute(
            "SELECT COUNT(*) FROM intents WHERE state = 'accepted' AND (sent_at < ? OR sent_at > ?)", (now, now)
        )
        left = int(left_out.fetchone()[0])
        head = Bundle(
            rotation=pending_rotation(data_dir),
            device_id=identity.device_id,
            bridge_key=pins.key_id,
            id=new_id(),
            made_at=now,
            confirms=confirm_messages,
        )
        data = _file_of(head, batches, key, pins.recipient)
        _write_bundle(out, data)
        # The bundle carries these confirms (if it is lost, the next receipt names them again).
        offline_ops.drop_confirms(conn, confirms)
        try:
            conn.execute("COMMIT")
        except BaseException:
            out.unlink(missing_ok=True)  # its intents are not marked sent: the file must not leave the site
            raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return Exported(head.id, used["intents"], len(confirms), left, len(data), used["unsendable"], sent_as_another)


def _file_of(head: Bundle, batches: list[bytes], key: bytes, recipient: str) -> bytes:
    """The bundle's file: `head` with `batches` (emptied here), signed, then sealed. Each stage's input is
    dropped once the next is made: about two copies of the bundle at the peak, where it was five (a 64 MiB
    bundle on a small box; `intent_contract.msgpack_join`)."""
    encoded = replace(head, batches=tuple(batches)).encode()
    batches.clear()
    document = signed.sign(encoded, key, typ=BUNDLE_TYPE, kid=head.device_id)
    del encoded
    return sealed.seal(document, recipient)


def _write_bundle(out: Path, data: bytes) -> None:
    """Write the bundle whole (aside, synced, renamed, directory synced); ConfigError when it cannot.

    A failure after the rename (the directory's sync: a stick pulled out, an I/O error) left the bundle in
    place while its intents stayed unmarked, so they could still be cancelled or expire here while the
    bridge ran them; the file is removed then, as when the commit fails.
    """
    before = _file_id(out)
    try:
        write_atomic(out, data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if _file_id(out) not in (None, before):
            try:
                out.unlink()
            except OSError:
                raise ConfigError(
                    f"cannot write {out}: {reason}; nothing was marked sent, and the file may be there: delete it"
                ) from None
        raise ConfigError(f"cannot write {out}: {reason}; nothing was marked sent") from None


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _confirms(conn: sqlite3.Connection, max_bytes: int) -> tuple[list[str], tuple[bytes, ...], int]:
    """The ids this bundle confirms, their messages and the room left for intents: confirms are taken first,
    in at most half the room, so that the results a receipt brought stop being repeated (and can be purged)
    at the bridge."""
    by_attempt = offline_ops.confirms_to_send(conn, (max_bytes - _HEADROOM) // 2)
    step = CONFIRMS_PER_MESSAGE
    messages = tuple(
        encode_confirms(ids[i : i + step], attempt)
        for attempt, ids in by_attempt.items()
        for i in range(0, len(ids), step)
    )
    every = [intent_id for ids in by_attempt.values() for intent_id in ids]
    return every, messages, max_bytes - _HEADROOM - sum(len(m) for m in messages)


def _device_key(data_dir: Path) -> bytes:
    """This device's private key, checked to sign with before anything is taken for the bundle."""
    path = key_file(data_dir)
    try:
        key = path.read_bytes()
        signed.check_signing_key(key)
    except OSError as exc:
        raise ConfigError(f"cannot read the device key {path}: {exc.strerror or exc}") from None
    except DecodeError as exc:
        raise ConfigError(
            f"the device key {path} is damaged: {exc}; re-enroll after moving {identity_dir(data_dir)} away"
        ) from None
    return key
