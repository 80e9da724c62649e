"""Fair shares of an integration's slots: the pure allocation, its caps and weights, and a drain simulated
with one tenant flooding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.fair_share import FairRound, Share, Shares, WaitingTenants, allocate, rotated

EVEN = Shares()


def test_free_slots_go_to_the_tenant_furthest_below_its_share() -> None:
    # A holds every slot but one; B waits: the free slot is B's.
    assert allocate(1, 4, {"a": 3}, ["a", "b"], EVEN) == {"b": 1}
    # Both idle: the slots alternate, the first in line taking the odd one.
    assert allocate(3, 4, {}, ["a", "b"], EVEN) == {"a": 2, "b": 1}
    assert allocate(3, 4, {}, ["b", "a"], EVEN) == {"b": 2, "a": 1}


def test_weights_divide_the_slots() -> None:
    shares = Shares({"gold": Share(weight=3.0)})
    assert allocate(8, 8, {}, ["basic", "gold"], shares) == {"gold": 6, "basic": 2}


def test_caps_keep_slots_free_for_others_even_when_nobody_else_waits() -> None:
    shares = Shares({"a": Share(max_share=0.5)})
    assert allocate(4, 4, {}, ["a"], shares) == {"a": 2}
    assert allocate(2, 4, {"a": 2}, ["a"], shares) == {}
    assert allocate(2, 4, {"a": 2}, ["a", "b"], shares) == {"b": 2}
    # A cap is at least one slot, however small the fraction.
    assert Share(max_share=0.01).cap(4) == 1
    assert Share(max_share=0.75).cap(4) == 3


@pytest.mark.parametrize("bad", [{"weight": 0.0}, {"max_share": 0.0}, {"max_share": 1.5}])
def test_bad_shares_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Share(**bad)


def test_rotation_changes_who_goes_first() -> None:
    assert rotated(["b", "a", "c", "a"], 0) == ["a", "b", "c"]
    assert rotated(["b", "a", "c"], 4) == ["b", "c", "a"]
    assert rotated([], 3) == []


@given(
    free=st.integers(0, 20),
    slots=st.integers(1, 20),
    running=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 20)),
    waiting=st.lists(st.sampled_from("abcd"), unique=True),
    caps=st.dictionaries(st.sampled_from("abcd"), st.floats(0.05, 1.0)),
)
def test_an_allocation_never_overspends_nor_passes_a_cap(
    free: int, slots: int, running: dict[str, int], waiting: list[str], caps: dict[str, float]
) -> None:
    shares = Shares({t: Share(max_share=c) for t, c in caps.items()})
    grant = allocate(free, slots, running, waiting, shares)
    assert sum(grant.values()) <= free
    assert set(grant) <= set(waiting)
    for tenant, n in grant.items():
        assert n > 0
        assert running.get(tenant, 0) + n <= shares.of(tenant).cap(slots)
    # Slots stay free only when every waiting tenant is at its cap.
    if sum(grant.values()) < free:
        assert all(running.get(t, 0) + grant.get(t, 0) >= shares.of(t).cap(slots) for t in waiting)


def test_a_round_drops_a_tenant_whose_claim_comes_back_short() -> None:
    round_ = FairRound(free=4, slots=4, running={}, waiting=["a", "b"], shares=EVEN)
    assert round_.next_grant() == {"a": 2, "b": 2}
    round_.claimed("a", 2, 2)
    round_.claimed("b", 2, 1)  # b had one row due
    assert round_.waiting == ["a"]
    assert round_.next_grant() == {"a": 1}
    round_.claimed("a", 1, 1)
    assert round_.next_grant() == {}
    assert not round_.capped
    with pytest.raises(ValueError, match="between 0"):
        round_.claimed("a", 1, 2)


def test_a_round_says_when_caps_left_slots_free() -> None:
    round_ = FairRound(free=4, slots=4, running={}, waiting=["a"], shares=Shares({"a": Share(max_share=0.5)}))
    assert round_.next_grant() == {"a": 2}
    round_.claimed("a", 2, 2)
    assert round_.next_grant() == {}
    assert round_.capped


def test_a_flooding_tenant_cannot_starve_another() -> None:
    """Tenant A queues 2,000 jobs, then B 20; jobs end one at a time, oldest first; B's all end early."""
    slots = 4
    backlog = {"a": 2000, "b": 0}
    running: list[str] = []
    done = {"a": 0, "b": 0}
    turn = 0

    def fill() -> None:
        nonlocal turn
        waiting = rotated([t for t, n in backlog.items() if n], turn)
        turn += 1
        counts = {t: running.count(t) for t in backlog}
        round_ = FairRound(slots - len(running), slots, counts, waiting, EVEN)
        while grant := round_.next_grant():
            for tenant, n in grant.items():
                got = min(n, backlog[tenant])
                backlog[tenant] -= got
                running.extend([tenant] * got)
                round_.claimed(tenant, n, got)

    fill()
    assert running == ["a"] * 4
    backlog["b"] = 20
    while done["b"] < 20:
        done[running.pop(0)] += 1
        fill()
    # B had half the slots from its first free one on: A ended about as many as B meanwhile.
    assert done["a"] <= 24
    assert backlog["a"] > 1900


def test_the_waiting_list_is_read_again_only_when_stale() -> None:
    waiting = WaitingTenants(max_age=1.0)
    assert waiting.stale("email.send", 0.0)
    waiting.read("email.send", ["a", "b"], 10.0)
    assert not waiting.stale("email.send", 10.5)
    assert waiting.tenants("email.send") == ["a", "b"]
    assert waiting.stale("email.send", 11.0)  # too old: lapsed leases of other nodes
    waiting.woken(10.2)  # an admission: someone new may wait
    assert waiting.stale("email.send", 10.5)
    waiting.read("email.send", ["a", "b"], 10.5)
    waiting.drop("email.send", "a")  # its claim came back short
    assert waiting.tenants("email.send") == ["b"]
    assert not waiting.stale("email.send", 10.6)
    waiting.drop("email.send", "b")
    waiting.drop("email.send", "b")
    assert waiting.stale("email.send", 10.6)  # nobody known to wait: a retry may have come due
    assert waiting.tenants("sms.send") == []


def test_another_read_that_found_nothing_is_made_again_when_stale() -> None:
    waiting = WaitingTenants(max_age=1.0)
    assert not waiting.fresh("orphans", 0.0)
    waiting.checked("orphans", 5.0)
    assert waiting.fresh("orphans", 5.5)
    assert not waiting.fresh("orphans", 6.0)
    waiting.woken(5.5)
    assert not waiting.fresh("orphans", 5.6)
    waiting.woken(5.5)
    waiting.checked("orphans", 5.5)  # woken and checked at one instant (a clock that stands still): look again
    assert not waiting.fresh("orphans", 5.5)
