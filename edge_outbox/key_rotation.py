"""`edge-outbox rotate-key`: replace this device's key pair without a new enrollment code.

The next key is made here (`identity/next.key`) and proposed to the bridge in a rotation document:
the next public key signed with the next key, inside a signature of the current key
(cloud_bridge/device_keys.py). Once the bridge has it, the device signs with the next key; the
bridge takes that first use as the switch, after which the old key no longer works. A proposal
whose answer was lost is simply made again with the same next key.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from edge_outbox.bridge_access import ANSWER_LIMIT, client_tls_context
from edge_outbox.errors import PermanentError, TransientError
from edge_outbox.identity import DEVICE_KEY, Identity, identity_dir
from intent_contract import json_bounded, signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.errors import DecodeError
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey

NEXT_KEY = "next.key"
ROTATION_DOC = "rotation.doc"  # a proposal waiting for the next bundle (offline)


def rotation_document(data_dir: Path, identity: Identity, now: int) -> bytes:
    """The proposal of the next key (made now unless a proposal is already pending), signed by both keys."""
    directory = identity_dir(data_dir)
    next_path = directory / NEXT_KEY
    if not next_path.exists():
        fd = os.open(next_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(generate_private_key_pem())
            f.flush()
            os.fsync(f.fileno())
    next_key = next_path.read_bytes()
    body = NewKey(identity.device_id, public_key_pem(next_key), now).encode()
    inner = signed.sign(body, next_key, typ=NEW_KEY_TYPE, kid=identity.device_id)
    current = (directory / DEVICE_KEY).read_bytes()
    return signed.sign(inner, current, typ=KEY_ROTATION_TYPE, kid=identity.device_id)


def switch_to_next_key(data_dir: Path) -> None:
    """Sign with the next key from now on (the bridge has it)."""
    directory = identity_dir(data_dir)
    os.replace(directory / NEXT_KEY, directory / DEVICE_KEY)
    (directory / ROTATION_DOC).unlink(missing_ok=True)


def propose_offline(data_dir: Path, identity: Identity, now: int) -> None:
    """Put the proposal in the next bundle; the receipt that accepts it switches the key (adopt_next_key)."""
    (identity_dir(data_dir) / ROTATION_DOC).write_bytes(rotation_document(data_dir, identity, now))


def pending_rotation(data_dir: Path) -> bytes | None:
    path = identity_dir(data_dir) / ROTATION_DOC
    return path.read_bytes() if path.exists() else None


def adopt_next_key(data_dir: Path, accepted: str | None) -> bool:
    """Switch to the next key when a receipt says the bridge accepted exactly it; True if it did."""
    path = identity_dir(data_dir) / NEXT_KEY
    if accepted is None or not path.exists() or public_key_pem(path.read_bytes()).strip() != accepted.strip():
        return False
    switch_to_next_key(data_dir)
    return True


def rotate_online(data_dir: Path, identity: Identity, now: int) -> None:
    """Propose the next key over HTTPS and switch to it once the bridge has it."""
    if not identity.http_url:
        raise PermanentError("this device has no bridge address (enrolled offline): it cannot rotate its key online")
    document = rotation_document(data_dir, identity, now)
    try:
        response = httpx.post(
            f"{identity.http_url}/v1/rotate-key",
            content=document,
            headers={"Content-Type": "application/octet-stream"},
            verify=client_tls_context(data_dir),
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise TransientError(f"cannot reach the bridge to rotate the key (run it again): {exc}") from None
    if response.status_code != 200:
        try:
            body = json_bounded.loads(response.content, max_bytes=ANSWER_LIMIT)
        except DecodeError:
            body = None
        reason = body.get("detail", "") if isinstance(body, dict) else response.reason_phrase
        raise PermanentError(f"the bridge refused the key rotation (HTTP {response.status_code}): {reason}")
    switch_to_next_key(data_dir)
