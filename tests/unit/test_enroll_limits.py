"""Enrollment limits: per-address and overall token buckets, address keys, the refusal log throttle."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.enroll_limits import EnrollGate, EnrollLimits
from cloud_bridge.errors import ConfigError
from cloud_bridge.settings import build_settings
from intent_contract.accept_limits import address_key
from intent_contract.logs import LogThrottle

T0 = 1_700_000_000.0


def test_an_address_gets_its_burst_then_one_request_per_refill() -> None:
    gate = EnrollGate(EnrollLimits(per_address_per_minute=10))
    assert [gate.admit("192.0.2.1", T0) for _ in range(10)] == [None] * 10
    assert gate.admit("192.0.2.1", T0) == pytest.approx(6.0)
    assert gate.admit("192.0.2.1", T0 + 3.0) == pytest.approx(3.0)  # refusals do not push the wait out
    assert gate.admit("192.0.2.1", T0 + 6.0) is None
    assert gate.admit("192.0.2.2", T0 + 6.0) is None  # another address has its own bucket


def test_the_overall_limit_holds_across_addresses() -> None:
    gate = EnrollGate(EnrollLimits(per_address_per_minute=100, per_minute=3))
    assert [gate.admit(f"192.0.2.{n}", T0) for n in range(3)] == [None] * 3
    assert gate.admit("192.0.2.9", T0) == pytest.approx(20.0)
    assert gate.admit("192.0.2.9", T0 + 20.0) is None


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # one host's /64 is one address
        ("fe80::1%eth0", "fe80::/64"),
        (None, "unknown"),
        ("not an address", "unknown"),
    ],
)
def test_address_keys(address: str | None, key: str) -> None:
    assert address_key(address) == key


def test_the_address_table_is_bounded() -> None:
    gate = EnrollGate(EnrollLimits(per_address_per_minute=1, max_addresses=2))
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert gate.admit(address, T0) is None
    assert gate.admit("192.0.2.3", T0) is not None  # remembered
    assert gate.admit("192.0.2.1", T0) is None  # forgotten first: least recently seen


@given(times=st.lists(st.floats(min_value=0, max_value=600), min_size=1, max_size=200))
def test_no_window_admits_more_than_burst_plus_refill(times: list[float]) -> None:
    limits = EnrollLimits(per_address_per_minute=10)
    gate = EnrollGate(limits)
    admitted = [t for t in sorted(times) if gate.admit("192.0.2.1", T0 + t) is None]
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= 10 + (admitted[j] - start) * 10 / 60 + 1e-9


def test_the_log_throttle_writes_one_line_a_second_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval=1.0)
    assert throttle.allow(T0) == 0
    assert [throttle.allow(T0 + 0.1 * n) for n in range(1, 10)] == [None] * 9
    assert throttle.allow(T0 + 1.0) == 9
    assert throttle.allow(T0 + 1.5) is None
    assert throttle.allow(T0 + 5.0) == 1


def test_limits_come_from_the_bridge_table(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[bridge]\nenroll_per_address_per_minute = 2\nenroll_per_minute = 120\n")
    assert build_settings(data_dir=tmp_path, env={}, config_path=config).enroll_limits == EnrollLimits(2, 120)
    assert build_settings(data_dir=tmp_path, env={}).enroll_limits == EnrollLimits()
    config.write_text("[bridge]\nenroll_per_minute = 0\n")
    with pytest.raises(ConfigError, match=r"bridge\.enroll_per_minute: Input should be greater than 0"):
        build_settings(data_dir=tmp_path, env={}, config_path=config)


def test_dashboard_logins_are_held_to_10_a_minute_per_address_and_100_overall() -> None:
    from cloud_bridge.dashboard.views import LOGIN_LIMITS

    gate = EnrollGate(LOGIN_LIMITS)
    assert [gate.admit("192.0.2.1", T0) for _ in range(10)] == [None] * 10
    assert gate.admit("192.0.2.1", T0) == pytest.approx(6.0)
    assert [gate.admit(f"198.51.100.{n}", T0) for n in range(90)] == [None] * 90  # 100 in all
    assert gate.admit("203.0.113.1", T0) == pytest.approx(0.6)  # a fresh address, but the overall bucket is empty
