"""Enrollment of a site that never connects, on files.

1. `cloud-bridge devices enroll-ticket` makes a one-time code and writes it, with the bridge's
   offline public keys, into a ticket file for the technician (JSON).
2. On the site, `edge-outbox enroll-request --ticket FILE` makes the device's key and writes a request:
   the code and the public key, signed with that key (proof it holds the private half) and encrypted
   to the bridge's key from the ticket, so the stick does not reveal the code.
3. `cloud-bridge devices enroll-offline REQUEST --out RESPONSE` (here) redeems the code with
   `Registry.redeem`, exactly as `POST /v1/enroll` does, and signs the response with the bridge's
   offline key: the device id, the key it enrolled, the bridge's time.
4. `edge-outbox enroll-import RESPONSE` checks it against the key pinned from the ticket.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from cloud_bridge.errors import AuthError, OfflineFileError
from cloud_bridge.offline_keys import OfflineKeys
from cloud_bridge.registry import Device, Registry
from intent_contract import sealed, signed
from intent_contract.errors import DecodeError, SignatureError
from intent_contract.offline_wire import (
    ENROLL_FILE_BYTES,
    ENROLL_REQUEST_TYPE,
    ENROLL_RESPONSE_TYPE,
    EnrollRequest,
    EnrollResponse,
)


def ticket(keys: OfflineKeys, code: str, tenant: str, name: str, expires: str, bridge_url: str, ca_pem: str) -> str:
    """The ticket the technician carries to the site (JSON): the code and what the device must pin."""
    document = {
        "code": code,
        "tenant": tenant,
        "name": name,
        "expires": expires,
        "bridge": keys.public.to_json(),
        "bridge_url": bridge_url,  # where the device may reach the bridge one day ("" if never)
        "ca": ca_pem,  # the CA the device pins for that ("" if none)
    }
    return json.dumps(document, indent=2) + "\n"


def answer(
    keys: OfflineKeys, registry: Registry, data: bytes, *, audience: str, now: Callable[[], float]
) -> tuple[Device, bytes]:
    """Redeem an enrollment request; the device and the signed response. OfflineFileError / AuthError if refused."""
    if len(data) > ENROLL_FILE_BYTES:
        raise OfflineFileError(
            f"enrollment request of {len(data):,} bytes is over the {ENROLL_FILE_BYTES:,}-byte limit"
        )
    try:
        document = signed.read(
            sealed.unseal(data, keys.age_identity), typ=ENROLL_REQUEST_TYPE, max_bytes=ENROLL_FILE_BYTES
        )
        request = EnrollRequest.decode(document.body)  # the key that signed it is inside: read, then check
        signed.verify(document, request.public_key)
    except DecodeError as exc:
        raise OfflineFileError(
            f"not a readable enrollment request for this bridge (key {keys.public.key_id}): {exc}",
            code="request_unreadable",
        ) from None
    except SignatureError:
        raise OfflineFileError(
            "the enrollment request is not signed by the key it enrolls", code="request_forged"
        ) from None
    if request.bridge_key != keys.public.key_id:
        raise OfflineFileError(f"the request is for bridge key {request.bridge_key}, not {keys.public.key_id}")
    try:
        device = registry.redeem(request.code, request.public_key, now())
    except AuthError:  # code unknown, used or expired; or the key is a revoked device's
        # Used by this very request before (its response could not be written, or was lost on the way):
        # answered again, for the device it enrolled. Only the holder of the key can make such a request.
        again = registry.redeemed(request.code, request.public_key)
        if again is None:
            raise
        device = again
    response = EnrollResponse(
        device_id=device.device_id,
        tenant=device.tenant,
        name=device.name,
        audience=audience,
        public_key=request.public_key,
        bridge_key=keys.public.key_id,
        made_at=int(now() * 1000),
        request_made_at=request.made_at,
    )
    body = signed.sign(response.encode(), keys.signing_key, typ=ENROLL_RESPONSE_TYPE, kid=keys.public.key_id)
    return device, body
