"""The forwarder's send window: bounded intents and batch messages in flight, resends after the timeout."""

from __future__ import annotations

from edge_outbox.send_window import SendWindow


def test_room_is_bounded_by_intents_and_by_batch_messages() -> None:
    window = SendWindow(window=10, max_batches=2, ack_timeout_ms=1000)
    window.reset(0)
    assert window.room() == 10
    window.sent(["a", "b", "c"], 0)
    assert window.room() == 7
    window.sent(["d"], 0)
    assert window.room() == 0  # two batch messages wait for acks, whatever their size
    assert window.acked("d") and not window.acked("d")  # a repeated ack counts once
    window.expire(1)
    assert window.room() == 7  # the batch of d is done


def test_unacknowledged_intents_leave_after_the_timeout_and_are_due_again() -> None:
    window = SendWindow(window=10, max_batches=8, ack_timeout_ms=1000)
    window.reset(500)
    window.sent(["a"], 600)
    assert window.sent_before(700) == 500  # only what went out on an earlier connection is due
    window.expire(1599)
    assert window.in_flight == 1
    window.expire(1601)
    assert window.in_flight == 0 and window.room() == 10
    assert window.sent_before(1601) == 601  # a was sent at 600: due again


def test_a_new_connection_starts_empty() -> None:
    window = SendWindow(window=4, max_batches=8, ack_timeout_ms=1000)
    window.reset(0)
    window.sent(["a", "b", "c", "d"], 0)
    assert window.room() == 0
    window.reset(50)
    assert window.room() == 4 and window.sent_before(60) == 50
    assert not window.acked("a")  # an ack for an earlier connection's send is not this window's


def test_what_went_out_before_the_clock_stepped_back_leaves_the_window() -> None:
    """Sent at a time the stepped-back clock will not pass for hours: it never timed out, and its room stayed taken
    on this connection while the bridge (which had dropped its batch) would never ack it."""
    window = SendWindow(window=2, max_batches=8, ack_timeout_ms=1000)
    window.reset(10_000_000)
    window.sent(["a", "b"], 10_000_000)
    assert window.room() == 0
    window.expire(10_000_000 - 3 * 3600 * 1000)
    assert window.in_flight == 0 and window.room() == 2
