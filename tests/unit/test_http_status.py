"""A provider's HTTP answer as the bridge reads it: Retry-After in seconds, each status in its error family."""

from __future__ import annotations

import time

import pytest

from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.http_status import parse_retry_after, status_error


def test_retry_after_forms() -> None:
    assert parse_retry_after("120", 0.0) == 120.0
    assert parse_retry_after(" 7 ", 0.0) == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0.0  # a date already past
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after("", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


@pytest.mark.parametrize(
    "date",
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",  # IMF-fixdate
        "Wednesday, 21-Oct-15 07:28:00 GMT",  # RFC 850
        "Wed Oct 21 07:28:00 2015",  # asctime: no zone written, GMT by RFC 9110
        "Wed, 21 Oct 2015 07:28:00 -0000",  # RFC 5322's "UTC, no local zone known"
    ],
)
def test_retry_after_dates_are_gmt_whatever_the_bridge_s_zone(date: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A date without a zone (asctime, one of the three forms RFC 9110 has recipients accept) was read in the
    bridge host's local time: on a host in New York a provider's "in 10 s" became a wait of 4 hours."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after(date, 1445412470.0) == 10.0
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("status", "kind", "code", "detail"),
    [
        (301, PermanentError, "sms_redirect", "HTTP 301 Moved Permanently (redirects are not followed)"),
        (400, PermanentError, "sms_400", "HTTP 400 Bad Request"),
        (401, TransientError, "sms_401", "HTTP 401 Unauthorized: the provider refused the bridge's credential"),
        (404, PermanentError, "sms_404", "HTTP 404 Not Found"),
        (408, TransientError, "sms_408", "HTTP 408 Request Timeout"),
        (429, TransientError, "sms_429", "HTTP 429 Too Many Requests"),
        (503, TransientError, "sms_503", "HTTP 503 Service Unavailable"),
        (599, TransientError, "sms_599", "HTTP 599 unknown status"),
    ],
)
def test_each_status_has_its_family_code_and_standard_reason(
    status: int, kind: type[Exception], code: str, detail: str
) -> None:
    error = status_error(status, 3.0, "sms")
    assert type(error) is kind
    assert (error.code, error.detail) == (code, detail)


def test_only_a_retryable_status_carries_the_provider_s_wait_and_the_note_follows_the_reason() -> None:
    busy = status_error(429, 3.0, note=" (provider code 20429)")
    assert isinstance(busy, TransientError)
    assert (busy.code, busy.retry_after) == ("http_429", 3.0)
    assert busy.detail == "HTTP 429 Too Many Requests (provider code 20429)"
    refused = status_error(401, 3.0)
    assert isinstance(refused, TransientError)
    assert refused.retry_after is None
