"""The PROXY header a balancer sends (intent_contract.proxy_header), and whose it is read from (accept_limits)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from pydantic import ValidationError

from cloud_bridge.config import BridgeConfig
from intent_contract.accept_limits import from_proxy
from intent_contract.errors import ProxyHeaderError
from intent_contract.proxy_header import V2_SIGNATURE, ProxyHeader, parse

V1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8883\r\n"


def v2(command: int, family: int, addresses: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(addresses)) + addresses


V2_IPV4 = v2(1, 0x11, bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 8883))
V2_IPV6 = v2(1, 0x21, ipaddress.IPv6Address("2001:db8::7").packed + bytes(16) + struct.pack("!HH", 40000, 8883))


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (V1 + b"\x16\x03\x01", ProxyHeader(len(V1), "192.0.2.7", 40000)),
        (b"PROXY TCP6 2001:db8::7 ::1 40000 8883\r\n", ProxyHeader(39, "2001:db8::7", 40000)),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(15, None, None)),
        (V2_IPV4 + b"\x16", ProxyHeader(len(V2_IPV4), "192.0.2.7", 40000)),
        (V2_IPV6, ProxyHeader(len(V2_IPV6), "2001:db8::7", 40000)),
        (v2(0, 0x00, b""), ProxyHeader(16, None, None)),  # LOCAL: HAProxy's health check
        (v2(1, 0x11, bytes(12) + b"\x04\x00\x01x"), ProxyHeader(32, "0.0.0.0", 0)),  # with a TLV after the addresses
    ],
)
def test_a_complete_header_names_the_client(data: bytes, header: ProxyHeader) -> None:
    assert parse(data) == header


@pytest.mark.parametrize("size", [1, 5, 20, len(V1) - 1])
def test_a_version_1_header_in_part_waits_for_more(size: int) -> None:
    assert parse(V1[:size]) is None


@pytest.mark.parametrize("size", [1, 12, 15, 16, len(V2_IPV4) - 1])
def test_a_version_2_header_in_part_waits_for_more(size: int) -> None:
    assert parse(V2_IPV4[:size]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\xa5",  # a TLS ClientHello: the balancer sends no header
        b"GET / HTTP/1.1\r\n",
        b"PROXY " + b"1" * 120,  # no line end within 107 bytes
        b"PROXY TCP4 192.0.2.7\r\n",
        b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",  # an IPv6 address said to be TCP4
        b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 8883\r\n",
        b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
        V2_SIGNATURE[:11] + b"X",
        V2_SIGNATURE + struct.pack("!BBH", 0x31, 0x11, 12),  # version 3
        V2_SIGNATURE + struct.pack("!BBH", 0x22, 0x11, 12),  # command 2
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 60000),  # 60 kB of addresses and TLVs: over the limit
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_only_the_configured_balancers_send_headers() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::/64"))
    assert [from_proxy(a, proxies) for a in ("10.0.0.5", "::ffff:10.0.0.5", "2001:db8::9", "10.0.1.5", "", "x")] == [
        True, True, True, False, False, False
    ]  # fmt: skip
    assert not from_proxy("10.0.0.5", ())


def test_the_config_refuses_a_bad_network_and_everyone() -> None:
    with pytest.raises(ValidationError) as refused:
        BridgeConfig.model_validate({"bridge": {"proxy_protocol_from": ["10.0.0.0/24", "not-a-net", "0.0.0.0/0"]}})
    assert "'not-a-net' is not an address" in str(refused.value)
    assert "'0.0.0.0/0' would let anyone" in str(refused.value)
    good = BridgeConfig.model_validate({"bridge": {"proxy_protocol_from": ["10.0.0.5", "2001:db8::/64"]}})
    assert [str(n) for n in good.bridge.connection_limits.proxies] == ["10.0.0.5/32", "2001:db8::/64"]
