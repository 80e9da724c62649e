"""What a provider's HTTP answer means to the bridge: its status as an error family, its Retry-After in seconds.

Shared by the integrations that call HTTP APIs (http.request through aiohttp, sms.send through httpx);
no client library here, so neither imports the other's.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from http import HTTPStatus

from cloud_bridge.errors import PermanentError, TransientError


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


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
