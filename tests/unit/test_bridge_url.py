"""The one rule for the bridge's enrollment address (edge `enroll --bridge`, the ticket, `enroll-ticket`)."""

from __future__ import annotations

import pytest

from intent_contract.bridge_url import bridge_url_host


@pytest.mark.parametrize(
    ("url", "host"),
    [("https://bridge.example.com:8443", "bridge.example.com"), ("https://b.example/", "b.example"),
     ("https://[::1]:8443", "::1"), ("https://Bridge.Example", "bridge.example")],
)  # fmt: skip
def test_addresses_taken(url: str, host: str) -> None:
    assert bridge_url_host(url) == host


@pytest.mark.parametrize(
    ("url", "why"),
    [("https://[bridge.example.com]:8443", "is not a URL"), ("https://b:99999", "is not a URL"),
     ("https://b:x", "is not a URL"), ("https://b:0", "expected https://HOST[:PORT]"),
     ("http://b", "expected https://HOST[:PORT]"), ("https:///x", "expected https://HOST[:PORT]"),
     ("bridge.example.com", "expected https://HOST[:PORT]"), ("https://u@b", "without a user"),
     ("https://b/?q=1", "without a user, query or fragment"), ("https://b\x1b]0;x\x07", "\\u001b")],
)  # fmt: skip
def test_addresses_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="expected https://HOST") as refused:
        bridge_url_host(url)
    assert why in str(refused.value)
