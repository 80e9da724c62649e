"""The email of an email.send intent: its message and envelope, built from the parsed mailboxes policy checked,
and the last guard on its flattened head. No I/O: the SMTP integration (`smtp.py`) sends what this builds."""

from __future__ import annotations

import hashlib
import re
from email.message import EmailMessage
from email.utils import formatdate
from typing import Final

from aiosmtplib.email import flatten_message

from cloud_bridge.errors import NotAMailboxError, PermanentError
from cloud_bridge.integrations.base import Job
from cloud_bridge.mailbox import Mailbox, parse_mailbox

# The header fields build_message sets, each at most once. In the flattened head every other line must
# be a continuation (leading space or tab): CPython's folder has started continuations without one.
_OWN_HEADERS: Final = frozenset(
    {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version", "content-type",
     "content-transfer-encoding"}
)  # fmt: skip

# Every C0 control (tab and NUL included), DEL, C1, and the Unicode line and paragraph separators.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def message_id(idempotency_key: str) -> str:
    """A Message-ID that is the same for every send of one intent attempt."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@edge-outbox>"


def _list(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def build_message(job: Job, now: float) -> tuple[EmailMessage, list[str]]:
    """The message and its envelope recipients (to, cc and bcc; bcc never in a header)."""
    payload = job.payload
    sender = job.overrides.get("from")
    if not isinstance(sender, str) or not sender:
        raise PermanentError("policy decided no from-address for this email", code="policy_from")
    to, cc, bcc = _list(payload.get("to")), _list(payload.get("cc")), _list(payload.get("bcc"))
    reply_to, subject = _list(payload.get("reply_to")), str(payload.get("subject", ""))
    headers = {"from": [sender], "to": to, "cc": cc, "bcc": bcc, "reply_to": reply_to, "subject": [subject]}
    for name, values in headers.items():
        if any(_CONTROL.search(value) for value in values):
            # The email package refuses CR and LF itself but passes NUL, tab and the rest on to the relay.
            raise PermanentError(f"a control character in {name}", code="bad_message")
    # Headers and envelope from the parsed mailboxes (as policy checked them), never from device text
    # that CPython's header folder or aiosmtplib's parseaddr could read as something else.
    sender_box = _mailbox(sender, "from", code="policy_from")
    to_boxes, cc_boxes, bcc_boxes, reply_boxes = (
        [_mailbox(a, name) for a in field]
        for name, field in (("to", to), ("cc", cc), ("bcc", bcc), ("reply_to", reply_to))
    )
    message = EmailMessage()
    try:
        message["From"] = sender_box.header()
        message["To"] = [box.header() for box in to_boxes]
        if cc_boxes:
            message["Cc"] = [box.header() for box in cc_boxes]
        if reply_boxes:
            message["Reply-To"] = [box.header() for box in reply_boxes]
        message["Subject"] = subject
        message["Date"] = formatdate(now, usegmt=True)
        message["Message-ID"] = message_id(job.idempotency_key)
        text, html = payload.get("text"), payload.get("html")
        if text is not None:
            message.set_content(str(text))
            if html is not None:
                message.add_alternative(str(html), subtype="html")
        else:
            message.set_content(str(html or ""), subtype="html")
        # With aiosmtplib's own flattening: its SMTP policy (it asks for SMTPUTF8 only for a non-ASCII
        # address, which a mailbox here never is; 7bit or 8bit changes bodies, not how headers fold).
        flattened = flatten_message(message)
    except Exception as exc:  # noqa: BLE001
        # A line break in a header (ValueError) is refused by design; odd addresses also reach bugs inside
        # the email package (AttributeError for a domain of "["). Either way the message can never be built:
        # a retry would fail the same way.
        raise PermanentError(f"cannot build the message: {exc.__class__.__name__}", code="bad_message") from None
    check_head(flattened)
    return message, [str(box) for box in (*to_boxes, *cc_boxes, *bcc_boxes)]


def check_head(raw: bytes) -> None:
    """Refuse (bad_message) a flattened message whose head has a line that is neither the start of one of
    our own header fields, each once, nor a continuation: the last guard against header injection."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    seen: set[str] = set()
    for line in head.split(b"\r\n"):
        if b"\r" in line or b"\n" in line:
            raise PermanentError("a bare line break in the message header", code="bad_message")
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        field = name.decode("ascii", "replace").lower()
        if not colon or field not in _OWN_HEADERS or field in seen:
            raise PermanentError("the flattened message header has a line the bridge did not set", code="bad_message")
        seen.add(field)


def _mailbox(value: str, name: str, code: str = "bad_message") -> Mailbox:
    try:
        return parse_mailbox(value)
    except NotAMailboxError as exc:
        raise PermanentError(f"{name} is not a plain email address: {exc.detail}", code=code) from None
