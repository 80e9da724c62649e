"""How many connections a listener holds that are not yet settled: per address and in all (pure: no I/O, no clock).

`intent_contract.accept` counts a listener's connections here; the bridge's TLS ports and the edge's metrics
endpoint use it. An address is counted by `address_key`: IPv4 as is, IPv6 by its /64 (one host's usual share).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


def address_key(address: str | None) -> str:
    """The key an address is limited under: IPv4 as is, IPv6 by its /64 (one host's usual share)."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Connections not yet settled, per listener: from one address (an IPv6 /64) and in all.

    A connection from one of `proxies` (TCP balancers) is counted under the client address its PROXY header
    names (`intent_contract.proxy_header`), and that address is its source everywhere (logs, telemetry).
    """

    per_address: int = 128
    total: int = 512
    proxies: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.per_address <= self.total:
            raise ValueError("connection limits: 1 <= per_address <= total")


DEFAULT_CONNECTION_LIMITS = ConnectionLimits()


def from_proxy(address: str, proxies: tuple[Network, ...]) -> bool:
    """True when `address` is one of `proxies`: its connections start with a PROXY header."""
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


class Admission:
    """Counts a listener's connections that are not yet settled; pure (no I/O, no clock; `on_count` hears counts)."""

    def __init__(self, limits: ConnectionLimits, on_count: Callable[[int], None] | None = None) -> None:
        self.limits = limits
        self._on_count = on_count  # told every new count
        self._by_address: Counter[str] = Counter()
        self._total = 0

    @property
    def pending(self) -> int:
        return self._total

    def admit(self, address: str) -> Ticket | str:
        """A ticket for one more connection from `address`, or which limit refuses it ("address", "total")."""
        key = address_key(address)
        if self._total >= self.limits.total:
            return "total"
        if self._by_address[key] >= self.limits.per_address:
            return "address"
        self._by_address[key] += 1
        self._total += 1
        if self._on_count is not None:
            self._on_count(self._total)
        return Ticket(self, key)

    def _release(self, key: str) -> None:
        self._total -= 1
        left = self._by_address[key] - 1
        if left:
            self._by_address[key] = left
        else:
            del self._by_address[key]
        if self._on_count is not None:
            self._on_count(self._total)


class Ticket:
    """One admitted connection's place; `release` gives it back (once, however often it is called)."""

    __slots__ = ("_admission", "_key")

    def __init__(self, admission: Admission, key: str) -> None:
        self._admission: Admission | None = admission
        self._key = key

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self._key)
            self._admission = None
