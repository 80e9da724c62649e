"""The SSRF guard: every spelling of a private address is refused, public ones pass, exemptions work."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.ssrf import GuardedResolver, SsrfGuard, blocked_reason, parse_ip

BLOCKED_HOSTS = [
    "127.0.0.1",
    "127.1",
    "2130706433",  # decimal 127.0.0.1
    "0177.0.0.1",  # octal
    "0x7f.1",  # hex, short form
    "0x7F000001",
    "017700000001",
    "127.0.0.1.",
    "localhost.localdomain",  # resolved below by the fake resolver
    "0.0.0.0",
    "0",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "0xa9.0xfe.0xa9.0xfe",
    "169.254.1.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "198.18.0.1",  # benchmarking
    "[::1]",
    "::1",
    "[::]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[fc00::1]",
    "[fe80::1]",
    "[fe80::1%eth0]",
    "[fec0::1]",  # site-local (deprecated, still routed in places): Python calls it neither private nor not global
    "[fec0:0:0:ffff::1]",
    "[ff02::1]",
]


def fake_resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


@pytest.mark.parametrize("host", BLOCKED_HOSTS)
async def test_blocked_forms_are_refused(host: str) -> None:
    guard = SsrfGuard(resolver=fake_resolver({"localhost.localdomain": ["127.0.0.1"]}))
    with pytest.raises(PermanentError) as info:
        await guard.resolve(host.strip("[]") if host.startswith("[") else host, 443)
    assert info.value.code == "ssrf_blocked"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.258", "10.1.1.2"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("8.8.8.8", "8.8.8.8"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("09.1.1.1", None),  # 9 is not an octal digit: a name, resolved and checked later
        ("1..1", None),
        ("", None),
    ],
)
def test_parse_ip_accepts_resolver_spellings(host: str, expected: str | None) -> None:
    parsed = parse_ip(host)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass_the_classifier(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("127.0.0.1", "loopback"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "embeds loopback IPv4 address"),
    ],
)
def test_reasons(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


async def test_public_literal_is_returned_normalised_without_resolving() -> None:
    guard = SsrfGuard(resolver=fake_resolver({}))
    assert await guard.resolve("8.8.8.8", 443) == ["8.8.8.8"]


async def test_a_name_with_one_private_answer_is_refused() -> None:
    guard = SsrfGuard(resolver=fake_resolver({"rebind.example": ["93.184.215.14", "10.0.0.5"]}))
    with pytest.raises(PermanentError, match="private"):
        await guard.resolve("rebind.example", 443)


async def test_a_name_with_public_answers_returns_them_to_connect_to() -> None:
    guard = SsrfGuard(resolver=fake_resolver({"api.example": ["93.184.215.14", "2606:4700:4700::1111"]}))
    assert await guard.resolve("api.example", 443) == ["93.184.215.14", "2606:4700:4700::1111"]


async def test_allow_private_hosts_exempts_an_ip_and_a_name() -> None:
    guard = SsrfGuard(["127.0.0.1", "Internal.Example"], resolver=fake_resolver({"internal.example": ["10.0.0.9"]}))
    assert await guard.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert await guard.resolve("internal.example", 80) == ["10.0.0.9"]
    # The exemption is for that address only: other loopback spellings of other addresses stay refused.
    with pytest.raises(PermanentError):
        await guard.resolve("127.0.0.2", 80)
    with pytest.raises(PermanentError):
        await guard.resolve("[::1]", 80)


async def test_exempt_ip_also_covers_its_other_spellings() -> None:
    guard = SsrfGuard(["127.0.0.1"], resolver=fake_resolver({}))
    assert await guard.resolve("2130706433", 80) == ["127.0.0.1"]


async def test_real_resolution_of_localhost_is_refused() -> None:
    with pytest.raises(PermanentError) as info:
        await SsrfGuard().resolve("localhost", 80)
    assert info.value.code == "ssrf_blocked"


async def test_unresolvable_name_is_transient() -> None:
    with pytest.raises(TransientError) as info:
        await SsrfGuard().resolve("no-such-host.invalid", 80)
    assert info.value.code == "dns_error"


def test_check_literal_refuses_early_and_leaves_names_alone() -> None:
    guard = SsrfGuard()
    with pytest.raises(PermanentError):
        guard.check_literal("0x7f.1")
    guard.check_literal("api.example")
    guard.check_literal("8.8.8.8")


async def test_guarded_resolver_answers_only_checked_numeric_addresses() -> None:
    """aiohttp connects to `host` of each answer and keeps `hostname` (the name) for SNI and Host."""
    resolver = GuardedResolver(SsrfGuard(resolver=fake_resolver({"api.example": ["93.184.215.14", "2606:4700::1"]})))
    answers = await resolver.resolve("api.example", 443)
    assert [(a["hostname"], a["host"], a["port"], a["family"]) for a in answers] == [
        ("api.example", "93.184.215.14", 443, socket.AF_INET),
        ("api.example", "2606:4700::1", 443, socket.AF_INET6),
    ]


async def test_guarded_resolver_raises_the_guards_refusal() -> None:
    resolver = GuardedResolver(SsrfGuard(resolver=fake_resolver({"rebind.example": ["93.184.215.14", "10.0.0.5"]})))
    with pytest.raises(PermanentError) as info:
        await resolver.resolve("rebind.example", 443)
    assert info.value.code == "ssrf_blocked"
