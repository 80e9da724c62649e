"""The bridge's enrollment address, as `edge-outbox enroll --bridge`, `cloud-bridge devices enroll-ticket
--bridge-url` and the ticket's reader accept it: one rule for both sides.

A ticket made with `https://[bridge.example.com]:8443` used to pass the bridge and the edge's request,
and only `enroll-import` (after the bridge had spent the one-time code) failed on it. Pure: no I/O.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from intent_contract.readable import readable

EXPECTED = "https://HOST[:PORT]"


def bridge_url_host(url: str) -> str:
    """The host of `url` when it is an https:// address with a host (and a port from 1 to 65535, when
    given); ValueError saying why otherwise."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # both raise ValueError on a malformed netloc or port
    except ValueError as exc:
        raise ValueError(f"{readable(url)!r} is not a URL ({exc}); expected {EXPECTED}") from None
    if parts.scheme != "https" or not host or port == 0:
        raise ValueError(f"{readable(url)!r}: expected {EXPECTED}")
    if parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"{readable(url)!r}: expected {EXPECTED}, without a user, query or fragment")
    return host
