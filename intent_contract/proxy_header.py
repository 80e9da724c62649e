"""The PROXY protocol header a TCP balancer puts before a connection's bytes (pure: no I/O).

HAProxy's `send-proxy` (version 1, a text line) and `send-proxy-v2` (binary), as nginx `stream` and the
cloud balancers send them: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt. Behind a TCP
balancer every connection comes from the balancer's address; the header names the client's. It is read
only from a connection whose source is a configured balancer (`intent_contract.accept`): from anyone
else the same bytes would be a client naming whatever address it liked.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from intent_contract.errors import ProxyHeaderError

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest version 1 line, CRLF included (the specification's bound)
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX: Final = 16 + 1024  # the fixed part and at most this many address and TLV bytes (HAProxy sends < 300)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: `length` bytes of it, and the client's address (None: the balancer's own
    connection, a health check, or a protocol the header does not name: its source is the balancer)."""

    length: int
    address: str | None
    port: int | None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None while it is incomplete; ProxyHeaderError when there is none."""
    if data[:1] == V2_SIGNATURE[:1]:
        return _v2(data)
    if data[:1] == V1_PREFIX[:1]:
        return _v1(data)
    raise ProxyHeaderError("no PROXY header from the balancer", data)


def _v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or not V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
            raise ProxyHeaderError("a PROXY version 1 line longer than 107 bytes, or none", data)
        return None
    words = data[:end].split(b" ")
    if words[0] != V1_PREFIX.strip():
        raise ProxyHeaderError("no PROXY header from the balancer", data)
    if words[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(end + 2, None, None)
    if len(words) != 6 or words[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("a PROXY version 1 line that is not TCP4/TCP6 with two addresses and ports", data)
    try:
        source = ipaddress.ip_address(words[2].decode("ascii"))
        port = int(words[4])
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("a PROXY version 1 line with a bad source address or port", data) from None
    if source.version != (4 if words[1] == b"TCP4" else 6) or not 0 <= port <= 65535:
        raise ProxyHeaderError("a PROXY version 1 line with a bad source address or port", data)
    return ProxyHeader(end + 2, str(source), port)


def _v2(data: bytes) -> ProxyHeader | None:
    if not V2_SIGNATURE.startswith(data[:12]):
        raise ProxyHeaderError("no PROXY header from the balancer", data)
    if len(data) < 16:
        return None
    version_command, family, size = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyHeaderError("a PROXY version 2 header of an unknown version or command", data)
    if 16 + size > V2_MAX:
        raise ProxyHeaderError(f"a PROXY version 2 header of {16 + size} bytes, over the {V2_MAX}-byte limit", data)
    if len(data) < 16 + size:
        return None
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(16 + size, None, None)
    if family == 0x11 and size >= 12:  # TCP over IPv4
        return ProxyHeader(16 + size, str(ipaddress.IPv4Address(data[16:20])), struct.unpack_from("!H", data, 24)[0])
    if family == 0x21 and size >= 36:  # TCP over IPv6
        return ProxyHeader(16 + size, str(ipaddress.IPv6Address(data[16:32])), struct.unpack_from("!H", data, 48)[0])
    return ProxyHeader(16 + size, None, None)  # UNSPEC, UDP or a unix socket: the balancer is the source
