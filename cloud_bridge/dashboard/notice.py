"""What an action's page says after the redirect that follows it: a one-line notice carried in a cookie.

An action (retry, cancel) answers with a redirect to the intents page (Post/Redirect/Get), so that reloading
that page asks for it again instead of sending the action again: a reload re-sent the POST, and the intent ran
once more. The outcome line rides in a cookie that lives for one page (the page deletes it): `__Host-` so
that only this origin, over HTTPS, can set it, and never in the URL, where a link could make the page claim
an action nobody took. Pure: the value in, the text out.
"""

from __future__ import annotations

import base64
import binascii

NOTICE_COOKIE = "__Host-bridge_notice"
NOTICE_S = 60  # long enough for the redirect; the page that shows it deletes it
MAX_CHARS = 300  # a cookie stays far below the 4 KiB a browser keeps


def notice_value(text: str) -> str:
    """The cookie value for `text` (clipped): base64url without its padding ('=' would be quoted)."""
    return base64.urlsafe_b64encode(text[:MAX_CHARS].encode()).decode().rstrip("=")


def notice_text(value: str | None) -> str:
    """The notice a cookie value holds; "" for none, or for a value that is not one of ours."""
    if not value or not value.isascii():
        return ""
    try:
        text = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, ValueError):  # not base64, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return ""
    return text[:MAX_CHARS]
