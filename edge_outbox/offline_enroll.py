"""Enrollment of a site that never connects (the bridge's side: cloud_bridge/offline_enroll.py).

`enroll-request --ticket FILE`: the ticket (from `cloud-bridge devices enroll-ticket`) gives the
one-time code and the bridge's offline keys, which are pinned at once; the device's key is made
here (`identity/pending.key` until the response comes) and the request, signed with it and
encrypted to the bridge, is written for the stick. `enroll-import RESPONSE`: a response signed with
the pinned key, for the key made here, completes the identity.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edge_outbox.bridge_clock import TimeSample
from edge_outbox.bridge_pins import BridgePins, load_pins, save_pins
from edge_outbox.enroll_client import adopt_identity_at, learn_time_at
from edge_outbox.errors import ConfigError, PermanentError
from edge_outbox.identity import Identity, identity_dir, load_identity, save_identity
from intent_contract import json_bounded, sealed, signed
from intent_contract.bridge_url import bridge_url_host
from intent_contract.device_token import generate_private_key_pem, is_private_key, public_key_pem
from intent_contract.errors import DecodeError, SignatureError
from intent_contract.files import write_atomic
from intent_contract.offline_wire import (
    ENROLL_FILE_BYTES,
    ENROLL_REQUEST_TYPE,
    ENROLL_RESPONSE_TYPE,
    EnrollRequest,
    EnrollResponse,
)

PENDING_KEY, PENDING = "pending.key", "pending.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Requested:
    """What `enroll_request` did: the public key asked for, and what became of a key an earlier request made."""

    public_key: str
    kept: bool  # an earlier request's key, asked for again: an answer to either request can be imported
    replaced: bool  # an earlier request's key, replaced (--new-key): an answer to that request is refused


@dataclass(frozen=True, slots=True)
class Ticket:
    code: str
    pins: BridgePins
    bridge_url: str
    ca: str


def read_ticket(data: bytes) -> Ticket:
    try:
        document = json_bounded.loads(data, max_bytes=ENROLL_FILE_BYTES)
    except DecodeError as exc:
        raise ConfigError(f"not an enrollment ticket: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("code"), str):
        raise ConfigError("not an enrollment ticket (from `cloud-bridge devices enroll-ticket`)")
    url, ca = document.get("bridge_url", ""), document.get("ca", "")
    if not isinstance(url, str) or not isinstance(ca, str):
        raise ConfigError("the ticket's bridge_url and ca must be strings")
    if url:  # checked here, before the bridge spends the code on it (enroll-import needs it whole)
        try:
            bridge_url_host(url)
        except ValueError as exc:
            raise ConfigError(f"the ticket's bridge_url {exc}: ask for a ticket with a valid --bridge-url") from None
    return Ticket(document["code"], BridgePins.from_json(document.get("bridge")), url, ca)


def enroll_request(data_dir: Path, ticket_data: bytes, out: Path, now: int, *, new_key: bool = False) -> Requested:
    """Write the request file. The private key stays in identity/; a key an earlier request made is asked
    for again (the bridge may already have answered that request) unless `new_key`."""
    existing = load_identity(data_dir)
    if existing is not None:
        raise PermanentError(f"already enrolled as device {existing.device_id}")
    ticket = read_ticket(ticket_data)
    directory = identity_dir(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key, kept, replaced = _pending_key(directory / PENDING_KEY, new_key)
        public = public_key_pem(key)
        request = EnrollRequest(ticket.code, public, ticket.pins.key_id, now)
        document = signed.sign(request.encode(), key, typ=ENROLL_REQUEST_TYPE, kid="new-device")
        pending = {"made_at": now, "bridge_url": ticket.bridge_url, "ca": ticket.ca}
        write_atomic(directory / PENDING, (json.dumps(pending) + "\n").encode())
        save_pins(directory, ticket.pins)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the enrollment request's files in {directory}: {exc.strerror or exc}; run it again"
        ) from None
    try:
        write_atomic(out, sealed.seal(document, ticket.pins.recipient))
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    return Requested(public, kept, replaced)


def _pending_key(path: Path, new_key: bool) -> tuple[bytes, bool, bool]:
    """The key to ask for, and whether it is an earlier request's (kept) or replaces one (replaced).

    Written whole (aside, synced, renamed, mode 0600). One that is there but is not a key (a write cut
    short by a full disk or a power cut, before this was written whole) is replaced, with a warning naming
    it: no answer can be imported for a key this device cannot read.
    """
    if path.exists() and not new_key:
        pem = path.read_bytes()
        if is_private_key(pem):
            return pem, True, False
        logger.warning(
            "%s, the key of an earlier enroll-request, is not a readable key (written on a full disk or cut"
            " short?): a new key replaces it, and an answer to that request cannot be imported",
            path,
        )
    replaced = path.exists()
    pem = generate_private_key_pem()
    write_atomic(path, pem, mode=0o600)
    return pem, False, replaced


def enroll_import(data_dir: Path, data: bytes, now: int) -> Identity:
    """Complete the identity from the bridge's signed response to our request."""
    directory = identity_dir(data_dir)
    if load_identity(data_dir) is not None:
        raise PermanentError("already enrolled")
    if not (directory / PENDING_KEY).exists():
        raise PermanentError("no enrollment request was made here (edge-outbox enroll-request --ticket FILE)")
    pins = load_pins(directory)
    key = (directory / PENDING_KEY).read_bytes()
    if not is_private_key(key):
        raise PermanentError(
            f"{directory / PENDING_KEY}, the key made by enroll-request, is not a readable key: run"
            " enroll-request again (a new key) and have the bridge answer the new request (with a new ticket"
            " if it answered the earlier one)"
        )
    try:
        pending = json_bounded.loads((directory / PENDING).read_bytes(), max_bytes=ENROLL_FILE_BYTES)
    except (OSError, DecodeError):
        pending = None
    if not isinstance(pending, dict):
        raise PermanentError(f"{directory / PENDING} is missing or damaged: run enroll-request again")
    url = str(pending.get("bridge_url", ""))
    try:
        host = bridge_url_host(url) if url else ""
    except ValueError as exc:  # a request made by a version that did not check the ticket's address
        raise PermanentError(
            f"the bridge address of the ticket this request was made from {exc}; nothing was changed here"
        ) from None
    try:
        document = signed.read(data, typ=ENROLL_RESPONSE_TYPE, max_bytes=ENROLL_FILE_BYTES)
        if document.kid != pins.key_id:
            raise PermanentError(f"response signed by bridge key {document.kid}, the ticket pinned {pins.key_id}")
        response = EnrollResponse.decode(signed.verify(document, pins.signing_key))
    except DecodeError as exc:
        raise PermanentError(f"not a readable enrollment response: {exc}") from None
    except SignatureError:
        raise PermanentError("the response does not verify with the bridge key the ticket pinned") from None
    if response.public_key.strip() != public_key_pem(key).strip():
        raise PermanentError("the response enrolls another key than the one made here: refused")
    identity = Identity(
        device_id=response.device_id,
        tenant=response.tenant,
        name=response.name,
        bridge_host=host,
        mqtt_port=8883,
        http_url=url.rstrip("/"),
        audience=response.audience,
    )
    try:
        save_identity(data_dir, identity, key, str(pending.get("ca", "")).encode(), pins)
    except OSError as exc:  # device.json is written last: not enrolled, the request's key kept, run it again
        raise ConfigError(f"cannot write the identity in {directory}: {exc.strerror or exc}; run it again") from None
    (directory / PENDING_KEY).unlink()
    (directory / PENDING).unlink()
    adopt_identity_at(data_dir, identity.device_id, now)
    sample = TimeSample.receipt(response.made_at, now, response.request_made_at, response.made_at, "enrollment")
    learn_time_at(data_dir, sample, now)
    return identity
