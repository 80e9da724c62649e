"""SSRF guard: which addresses an outbound request may reach, checked where the socket is opened.

The pure part classifies an address and parses every spelling of an IPv4 literal that resolvers
accept (decimal, octal, hex, short forms). `GuardedResolver` is the aiohttp resolver that resolves
a host, checks every answer and hands aiohttp only the checked addresses to connect to, so a DNS
answer that changes between check and connect (rebinding) is never used unchecked. TLS SNI and the
Host header still carry the original name: aiohttp takes them from the URL, not from the resolver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult

from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.threads import BoundedThreads

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPAT: Final = ipaddress.ip_network("::/96")
# The number forms inet_aton accepts in each dotted part (ASCII only, no sign, no underscores).
_HEX_PART: Final = re.compile(r"0[xX][0-9a-fA-F]+")
_OCT_PART: Final = re.compile(r"0[0-7]*")
_DEC_PART: Final = re.compile(r"[1-9][0-9]*")


def _parse_ipv4_part(part: str) -> int | None:
    if _HEX_PART.fullmatch(part):
        return int(part[2:], 16)
    if _OCT_PART.fullmatch(part):
        return int(part, 8)
    if _DEC_PART.fullmatch(part):
        return int(part, 10)
    return None


def _parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton semantics: 1 to 4 parts, each decimal, 0-octal or 0x-hex; the last fills the rest."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    values = [_parse_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    numbers = [v for v in values if v is not None]
    *head, last = numbers
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, byte in enumerate(head):
        value |= byte << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_ip(host: str) -> IPAddress | None:
    """The address a host string denotes when it is an IP literal in any accepted spelling, else None."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    return _parse_ipv4_loose(text.removesuffix("."))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be reached from the bridge, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return f"embeds {inner} IPv4 address" if inner else None
    checks: tuple[tuple[bool, str], ...] = (
        (ip in METADATA, "cloud metadata"),
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        # fec0::/10: deprecated (RFC 3879) but still routed inside some networks (Windows' fec0:0:0:ffff::1-3 DNS
        # servers); Python's is_private and is_global do not count it, so it passed as a public address.
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "carrier-grade NAT"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


class SsrfGuard:
    """Decides which hosts and addresses may be reached; `allow_private_hosts` exempts names or IPs."""

    def __init__(
        self, allow_private_hosts: Iterable[str] = (), resolver: Resolver | None = None, *, lookups: int = 4
    ) -> None:
        """`lookups`: name lookups at once, each in a thread of the guard's own (`threads.BoundedThreads`)."""
        self._names: set[str] = set()
        self._ips: set[IPAddress] = set()
        for host in allow_private_hosts:
            ip = parse_ip(host)
            if ip is None:
                self._names.add(host.strip().lower().removesuffix("."))
            else:
                self._ips.add(ip)
        self._lookups = BoundedThreads(lookups, "dns")
        self._resolver = resolver or self._getaddrinfo

    def check_address(self, ip: IPAddress, host: str) -> None:
        """Raise PermanentError(code='ssrf_blocked') unless `ip` may be reached."""
        if ip in self._ips:
            return
        reason = blocked_reason(ip)
        if reason is not None:
            raise PermanentError(f"refused to connect to {host!r}: {reason} address", code="ssrf_blocked")

    def check_literal(self, host: str) -> None:
        """Refuse an IP literal host early (before any request is built); names are checked on resolve."""
        ip = parse_ip(host)
        if ip is not None and not self._is_exempt_name(host):
            self.check_address(ip, host)

    def _is_exempt_name(self, host: str) -> bool:
        return host.strip().lower().removesuffix(".") in self._names

    async def _getaddrinfo(self, host: str, port: int) -> list[str]:
        # Not loop.getaddrinfo: that blocks a thread of the loop's default pool, where device authentication,
        # enrollment and admission run, for as long as the name server takes (glibc: its timeout times its
        # attempts, per server). A provider's name that resolved slowly (a DNS outage, or a tenant's own slow
        # name server) stopped every device from connecting while the requests to it were made.
        try:
            infos = await self._lookups.run(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (socket.gaierror, UnicodeError) as exc:
            raise TransientError(f"cannot resolve {host!r}: {exc.__class__.__name__}", code="dns_error") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def resolve(self, host: str, port: int) -> list[str]:
        """Addresses to connect to for `host`: every one checked; one blocked answer refuses the host."""
        ip = parse_ip(host)
        if ip is not None:
            if not self._is_exempt_name(host):
                self.check_address(ip, host)
            return [str(ip)]
        answers = await self._resolver(host, port)
        if not answers:
            raise TransientError(f"no address for {host!r}", code="dns_error")
        if self._is_exempt_name(host):
            return answers
        checked = []
        for answer in answers:
            address = ipaddress.ip_address(answer.split("%", 1)[0])
            self.check_address(address, host)
            checked.append(str(address))
        return checked


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver whose answers are the addresses the guard checked, and nothing else.

    With aiohttp's DNS cache off, every new connection asks this resolver and connects to exactly
    what it returns; aiohttp keeps the original name for TLS SNI, certificate checks and `Host`.
    aiohttp never asks a resolver about a host it takes for an IP literal: those are checked with
    `SsrfGuard.check_literal` before the request is made.
    """

    def __init__(self, guard: SsrfGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in await self._guard.resolve(host, port)
        ]

    async def close(self) -> None:
        return None
