"""What a provider's HTTP answer means to the bridge: its status as an error family, its Retry-After in seconds.

Shared by the integrations that call HTTP APIs (http.request through aiohttp, sms.send through httpx);
no client library here, so neither imports the other's.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Final

from cloud_bridge.errors import PermanentError, TransientError

# A call to a provider (connecting, sending, the answer) takes at most this many of its `timeout`s, whatever
# each wait takes: `timeout` alone bounded each wait for bytes, and a byte every so often held a call for days.
CALL_TIMEOUTS: Final = 3

# The longest wait a provider's Retry-After is believed for: a 400-digit value parsed to infinity and a date
# in year 9999 parked the row for good (an intent without a deadline never ran nor expired).
MAX_RETRY_AFTER_S = 86_400.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), at most a day, or None.

    Delta-seconds are ASCII digits: `str.isdigit` also takes '²' and '①', on which float() raised, and that
    ValueError escaped from an answer already received (a 200 included: the request was sent again).
    """
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # asctime, or "-0000": GMT (RFC 9110 5.6.7), not the bridge host's local time
            when = when.replace(tzinfo=UTC)
        wait = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, wait), MAX_RETRY_AFTER_S)


def status_error(
    status: int, retry_after: float | None, prefix: str = "http", note: str = ""
) -> TransientError | PermanentError:
    """The bridge error for a non-2xx status: 401/408/429/5xx retry, 3xx and other 4xx fail.

    A 401 is the provider refusing the bridge's credential, not the intent: it is retried, so that
    intents wait through a key rotation (the provider already switched, the bridge not yet reloaded)
    instead of failing. The detail is the status and its standard reason phrase (plus `note`), never
    the provider's text.
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "unknown status"
    detail = f"HTTP {status} {reason}{note}"
    if 300 <= status < 400:
        return PermanentError(detail + " (redirects are not followed)", code=f"{prefix}_redirect")
    if status == 401:
        return TransientError(f"{detail}: the provider refused the bridge's credential", code=f"{prefix}_401")
    if status in (408, 429) or status >= 500:
        return TransientError(detail, code=f"{prefix}_{status}", retry_after=retry_after)
    return PermanentError(detail, code=f"{prefix}_{status}")
