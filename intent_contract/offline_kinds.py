"""What an offline file is, said to the technician who gave one for another (a receipt to `cloud-bridge
import`, a bundle to `edge-outbox import-receipt`): the files look alike on a stick. From the file's first
bytes and its signed header only; nothing is verified or believed here. Pure."""

from __future__ import annotations

import json
from typing import Final

from intent_contract import sealed, signed
from intent_contract.offline_wire import (
    BUNDLE_TYPE,
    ENROLL_FILE_BYTES,
    ENROLL_REQUEST_TYPE,
    ENROLL_RESPONSE_TYPE,
    RECEIPT_TYPE,
)

KINDS: Final = {
    BUNDLE_TYPE: "a bundle (for `cloud-bridge import` at the bridge)",
    RECEIPT_TYPE: "a receipt (for `edge-outbox import-receipt` on the site)",
    ENROLL_REQUEST_TYPE: "an enrollment request (for `cloud-bridge devices enroll-offline` at the bridge)",
    ENROLL_RESPONSE_TYPE: "an enrollment response (for `edge-outbox enroll-import` on the site)",
}
# Bundles and enrollment requests are encrypted to the bridge: only the bridge can tell them apart.
SEALED_KIND: Final = (
    "a file encrypted to a bridge: a bundle or an enrollment request"
    " (for `cloud-bridge import` or `cloud-bridge devices enroll-offline` at the bridge)"
)


TICKET_KIND: Final = "an enrollment ticket (for `edge-outbox enroll-request --ticket` on the site)"
_SIGNED_START: Final = 0x83  # a signed document is a msgpack map of 3 entries (intent_contract.signed)


def file_kind(data: bytes, max_bytes: int) -> str | None:
    """What `data` is, in words (`KINDS`, `SEALED_KIND`, `TICKET_KIND`), when it is one of the offline files; None
    otherwise."""
    if sealed.is_sealed(data):
        return SEALED_KIND
    if data[:1] == b"{" and len(data) <= ENROLL_FILE_BYTES:
        try:
            document = json.loads(data)
        except ValueError:
            return None
        return TICKET_KIND if isinstance(document, dict) and "code" in document and "bridge" in document else None
    typ = signed.peek_type(data, max_bytes)
    return None if typ is None else KINDS.get(typ)


def maybe_cut_short(data: bytes) -> bool:
    """Whether unreadable `data` may be a signed document cut short or damaged (it starts as one, or is empty),
    rather than some other file."""
    return not data or data[0] == _SIGNED_START
