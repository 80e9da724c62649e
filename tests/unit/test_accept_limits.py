"""The count of a listener's connections not yet settled (intent_contract.accept_limits.Admission)."""

from __future__ import annotations

import pytest

from intent_contract.accept_limits import Admission, ConnectionLimits, Ticket


def test_one_address_is_held_to_its_limit_and_all_to_the_total() -> None:
    admission = Admission(ConnectionLimits(per_address=2, total=3))
    first, second = admission.admit("192.0.2.1"), admission.admit("192.0.2.1")
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    assert admission.admit("192.0.2.1") == "address"
    assert isinstance(admission.admit("192.0.2.2"), Ticket)
    assert admission.admit("192.0.2.3") == "total"
    assert admission.pending == 3


def test_an_ipv6_64_counts_as_one_address() -> None:
    admission = Admission(ConnectionLimits(per_address=1, total=10))
    assert isinstance(admission.admit("2001:db8:1:2::1"), Ticket)
    assert admission.admit("2001:db8:1:2::ffff") == "address"
    assert isinstance(admission.admit("2001:db8:1:3::1"), Ticket)


def test_a_ticket_given_back_twice_frees_one_place() -> None:
    admission = Admission(ConnectionLimits(per_address=1, total=2))
    ticket = admission.admit("192.0.2.1")
    assert isinstance(ticket, Ticket)
    ticket.release()
    ticket.release()
    assert admission.pending == 0
    again = admission.admit("192.0.2.1")
    assert isinstance(again, Ticket)
    assert admission.admit("192.0.2.1") == "address"  # the second release did not free a place it did not hold
    assert admission.pending == 1


@pytest.mark.parametrize(("per_address", "total"), [(0, 5), (6, 5), (-1, -1)])
def test_limits_that_cannot_hold_are_refused(per_address: int, total: int) -> None:
    with pytest.raises(ValueError, match="per_address"):
        ConnectionLimits(per_address=per_address, total=total)
