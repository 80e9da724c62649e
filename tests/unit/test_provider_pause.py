"""provider_pause.Pauses: pools paused until a time, and how long the executor's loop may sleep."""

from __future__ import annotations

from cloud_bridge.provider_pause import Pauses

SMS, MAIL = ("sms.send", "vendor"), ("email.send", "vendor")


def test_a_pause_holds_until_its_time_and_a_later_one_extends_it() -> None:
    pauses = Pauses()
    pauses.pause(SMS, 110.0)
    pauses.pause(SMS, 105.0)  # earlier: does not shorten it
    assert pauses.paused(SMS, 109.9) and not pauses.paused(MAIL, 100.0)
    assert not pauses.paused(SMS, 110.0)


def test_an_ended_pause_no_pool_looked_at_does_not_make_the_loop_spin() -> None:
    """The executor asks `paused` only of pools with free room: with every slot busy (or the pool gone in a reload)
    an ended pause stayed, and `wait` answered 0 at every pass of the loop, for ever: a busy loop."""
    pauses = Pauses()
    pauses.pause(SMS, 110.0)
    assert pauses.wait(1.0, 109.5) == 0.5
    assert pauses.wait(1.0, 111.0) == 1.0
    assert pauses.wait(1.0, 200.0) == 1.0
