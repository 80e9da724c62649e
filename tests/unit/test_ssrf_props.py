"""Properties: IPv4 literal parsing agrees with the C resolver; http.request URLs never leave their base."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.errors import PermanentError
from cloud_bridge.integrations.http import AuthKind, Credential
from cloud_bridge.integrations.ssrf import parse_ip
from cloud_bridge.integrations.url_scope import UrlScope
from cloud_bridge.secrets import Secret

PARTS = st.one_of(
    st.integers(0, 2**32).map(str),
    st.integers(0, 2**32).map(lambda n: f"0x{n:x}"),
    st.integers(0, 2**32).map(lambda n: f"0{n:o}"),
    st.text("0123456789abcdefxX", min_size=1, max_size=12),
)
HOSTS = st.lists(PARTS, min_size=1, max_size=5).map(".".join)


def inet_aton(host: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except OSError:
        return None


@settings(max_examples=2000, deadline=None)
@given(HOSTS)
def test_ipv4_literals_parse_like_inet_aton(host: str) -> None:
    """Every string the C library would turn into an address, the guard sees as that same address."""
    expected = inet_aton(host)
    parsed = parse_ip(host)
    if expected is not None:
        assert str(parsed) == expected
    else:
        assert parsed is None


SCOPE = UrlScope.from_config(
    {"base_urls": ["https://api.crm.example/v1/", "https://api.crm.example:8443/hooks"], "methods": ["GET"]}, "test"
)
CRED = Credential("crm", SCOPE, AuthKind.BEARER, "Authorization", Secret("t0ken-value"))
TRICKY_SEGMENTS = ["", ".", "..", "%2e", "%2E%2e", "%2f", "v1", "hooks", "a", "@", ":", "?", "#", "\\", "%00", ";",
                   "..;", "%3b", "%25", "%252e", "%252E%252e", "%2525", "%u002e", "%c0%ae"]  # fmt: skip
SEGMENT = st.one_of(
    st.sampled_from(TRICKY_SEGMENTS),
    st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=6),
)
PATHS = st.lists(SEGMENT, max_size=6).map(lambda s: "/" + "/".join(s))
PREFIXES = st.sampled_from(
    ["https://api.crm.example", "https://api.crm.example:443", "https://API.crm.example:8443", "http://api.crm.example",
     "https://api.crm.example.evil", "https://api.crm.example@evil", "https://evil", ""]
)  # fmt: skip


def under_a_base(url: str) -> bool:
    parts = urlsplit(url)
    port = parts.port or 443
    return parts.scheme == "https" and any(
        (parts.hostname, port) == (b.host, b.port) and parts.path.startswith(b.path) for b in SCOPE.base_urls
    )


@settings(max_examples=1500, deadline=None)
@given(prefix=PREFIXES, path=PATHS, as_url=st.booleans())
def test_target_url_is_always_under_a_base_without_dot_segments(prefix: str, path: str, as_url: bool) -> None:
    payload = {"method": "GET", "url": prefix + path} if as_url and prefix else {"method": "GET", "path": path}
    try:
        _, url = CRED.request(payload)
    except PermanentError as exc:
        refused = exc.code
        assert refused == "policy_url"  # a property test: refusing is one allowed outcome
        return
    assert under_a_base(url)
    for segment in urlsplit(url).path.split("/"):
        decoded = segment
        while unquote(decoded) != decoded:  # every server in a chain decoding once more
            decoded = unquote(decoded)
        assert decoded not in (".", "..")
        assert ";" not in decoded
    assert "@" not in urlsplit(url).netloc


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"path": "/contacts"}, "https://api.crm.example:443/v1/contacts"),
        ({"url": "https://API.CRM.example/v1/x?y=1"}, "https://api.crm.example:443/v1/x?y=1"),
        ({"url": "https://api.crm.example:8443/hooks/1"}, "https://api.crm.example:8443/hooks/1"),
    ],
)
def test_target_url_examples(payload: dict[str, str], expected: str) -> None:
    assert CRED.request({"method": "GET", **payload}) == ("GET", expected)
