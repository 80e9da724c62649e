"""`edge-outbox rotate-key`: replace this device's key pair without a new enrollment code.

The next key is made here (`identity/next.key`) and proposed to the bridge in a rotation document:
the next public key signed with the next key, inside a signature of the current key
(cloud_bridge/device_keys.py). Once the bridge has it, the device signs with the next key; the
bridge takes that first use as the switch, after which the old key no longer works. A proposal
whose answer was lost is simply made again with the same next key.

One rotation at a time (`one_rotation`): two runs at once proposed the same next key, and the second to hear
back found next.key already made device.key by the first, and ended in a traceback. `import-receipt` holds it
too: a receipt that accepts (or refuses) the next key switches to it (or deletes it) under a running rotation.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx

from edge_outbox.bridge_access import ANSWER_LIMIT, client_tls_context
from edge_outbox.errors import PermanentError, TransientError
from edge_outbox.forward_wire import link_failure
from edge_outbox.identity import DEVICE_KEY, Identity, identity_dir
from intent_contract import json_bounded, signed
from intent_contract.device_token import generate_private_key_pem, is_private_key, public_key_pem
from intent_contract.errors import DecodeError
from intent_contract.files import fsync_directory, write_atomic
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from intent_contract.readable import readable

NEXT_KEY = "next.key"
ROTATION_DOC = "rotation.doc"  # a proposal waiting for the next bundle (offline)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def one_rotation(data_dir: Path, then: str = "run it again if it failed") -> Iterator[None]:
    """Held for one rotation, or one receipt's switch of keys (`import-receipt`): an exclusive flock on the identity
    directory (the kernel ends it with the process, however it ends); TransientError at once, ending in `then`,
    when another holds it."""
    try:
        fd = os.open(identity_dir(data_dir), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise TransientError(f"cannot open {identity_dir(data_dir)}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransientError(
                f"another rotate-key or import-receipt is running on {data_dir}: wait for it to end ({then})"
            ) from None
        yield
    finally:
        os.close(fd)


def rotation_document(data_dir: Path, identity: Identity, now: int) -> bytes:
    """The proposal of the next key (made now unless a proposal is already pending), signed by both keys."""
    directory = identity_dir(data_dir)
    next_key = _next_key(directory / NEXT_KEY)
    body = NewKey(identity.device_id, public_key_pem(next_key), now).encode()
    inner = signed.sign(body, next_key, typ=NEW_KEY_TYPE, kid=identity.device_id)
    current = (directory / DEVICE_KEY).read_bytes()
    return signed.sign(inner, current, typ=KEY_ROTATION_TYPE, kid=identity.device_id)


def _next_key(path: Path) -> bytes:
    """The pending next key; a new one (written whole: aside, synced, renamed) when there is none.

    A next.key that is there but is not a key (an older version cut short between creating the file
    and writing it, or a damaged disk) is replaced by a new key, with a warning, rather than refused:
    that keeps `rotate-key` safe to run again without anyone deleting files by hand, and it loses
    nothing. The device never signed with a key it cannot read, so the bridge never promoted it; at
    most the bridge holds its public half as the proposed next key, and the new proposal replaces
    that one (the registry keeps one per device). A receipt that still accepts the lost key names a
    key this device does not hold, so adopt_next_key does not switch to it.
    """
    try:
        if path.exists():
            pem = path.read_bytes()
            if is_private_key(pem):
                return pem
            logger.warning("%s is not a readable key (a rotation cut short?): a new next key replaces it", path)
        pem = generate_private_key_pem()
        write_atomic(path, pem, mode=0o600)
    except OSError as exc:
        raise TransientError(f"cannot write the next key {path}: {exc.strerror or exc}; run it again") from None
    return pem


def switch_to_next_key(data_dir: Path) -> None:
    """Sign with the next key from now on (the bridge has it).

    The directory is synced after the rename: once the device signs with the new key the bridge ends
    the old one, and a power cut must not bring the old key back.
    """
    directory = identity_dir(data_dir)
    (directory / NEXT_KEY).replace(directory / DEVICE_KEY)
    (directory / ROTATION_DOC).unlink(missing_ok=True)
    fsync_directory(directory)


def propose_offline(data_dir: Path, identity: Identity, now: int) -> None:
    """Put the proposal in the next bundle; the receipt that accepts it switches the key (adopt_next_key)."""
    path = identity_dir(data_dir) / ROTATION_DOC
    document = rotation_document(data_dir, identity, now)
    try:
        write_atomic(path, document)
    except OSError as exc:
        raise TransientError(f"cannot write the key rotation {path}: {exc.strerror or exc}; run it again") from None


def pending_rotation(data_dir: Path) -> bytes | None:
    path = identity_dir(data_dir) / ROTATION_DOC
    return path.read_bytes() if path.exists() else None


def adopt_next_key(data_dir: Path, accepted: str | None) -> bool:
    """Switch to the next key when a receipt says the bridge accepted exactly it; True if it did."""
    path = identity_dir(data_dir) / NEXT_KEY
    if accepted is None or not path.exists():
        return False
    pem = path.read_bytes()
    if not is_private_key(pem) or public_key_pem(pem).strip() != accepted.strip():
        return False  # not a key this device can sign with; the next rotate-key replaces it
    switch_to_next_key(data_dir)
    return True


def drop_refused(data_dir: Path, refused_key: str | None) -> bool:
    """Forget the pending proposal when a receipt says the bridge refused exactly it; True if it did.

    The next `rotate-key` then makes a new key; kept, the refused proposal went in every bundle again."""
    directory = identity_dir(data_dir)
    path = directory / NEXT_KEY
    if refused_key is None or not path.exists():
        return False
    pem = path.read_bytes()
    if is_private_key(pem) and public_key_pem(pem).strip() != refused_key.strip():
        return False  # another proposal, made since
    (directory / ROTATION_DOC).unlink(missing_ok=True)
    path.unlink()
    fsync_directory(directory)
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
        code, line = link_failure(str(exc), identity.bridge_host)
        if code == "bridge_certificate":  # running it again meets the same certificate
            raise PermanentError(f"cannot rotate the key: {line}") from None
        raise TransientError(f"cannot reach the bridge to rotate the key (run it again): {exc}") from None
    try:
        body = json_bounded.loads(response.content, max_bytes=ANSWER_LIMIT)
    except DecodeError:
        body = None
    if response.status_code != 200:
        reason = body.get("detail", "") if isinstance(body, dict) else response.reason_phrase
        if response.status_code == 429 or response.status_code >= 500:  # busy, restarting, its store down
            raise TransientError(
                f"the bridge could not take the key rotation now (HTTP {response.status_code}): {reason}; run it"
                " again (it proposes the same next key)"
            )
        if response.status_code == 404:  # the bridge's own refusals are 400 and 403: it has no such request
            raise PermanentError(
                f"the bridge does not take key rotations (HTTP 404 for {identity.http_url}/v1/rotate-key: a bridge"
                " older than this edge, or a proxy in front of it that does not pass the path): upgrade the bridge,"
                " then run it again (it proposes the same next key); this device keeps signing with its current key"
            )
        raise PermanentError(f"the bridge refused the key rotation (HTTP {response.status_code}): {reason}")
    if not took_next_key(body, identity.device_id):
        # Switching on any 200 signed with a key the bridge may not hold, the old one gone: locked out.
        said = (
            f"next_key {readable(str(body.get('next_key')))[:64]!r}" if isinstance(body, dict) else "not a JSON object"
        )
        raise TransientError(
            f"the bridge's answer does not say it took the next key ({said}): this device keeps signing with its"
            " current key; run it again"
        )
    switch_to_next_key(data_dir)


def took_next_key(answer: object, device_id: str) -> bool:
    """Whether an answer of `POST /v1/rotate-key` says the bridge holds this device's next key."""
    return isinstance(answer, dict) and answer.get("next_key") == "accepted" and answer.get("device_id") == device_id
