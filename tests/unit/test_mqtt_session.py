"""A session's bookkeeping: QoS, windows, packet ids, redelivery and the status cursor (no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.mqtt.session import (
    NO_LOCAL,
    RETAIN_AS_PUBLISHED,
    SEND_RETAINED_IF_NEW,
    SEND_RETAINED_NEVER,
    Passed,
    Session,
    StatusCursor,
)


def session(**subscriptions: int) -> Session:
    s = Session("c", persistent=True, window=2)
    s.subscriptions = {k.replace("_", "/"): v for k, v in subscriptions.items()}
    return s


def test_delivered_qos_is_the_lower_of_published_and_granted() -> None:
    s = session(a_b=1)
    s.offer("a/b", b"x", 2)
    s.offer("a/b", b"y", 0)
    qos = [send.message.qos for send in s.take()]
    assert qos == [1, 0]


def test_overlapping_subscriptions_give_one_message_at_the_highest_qos() -> None:
    s = Session("c", persistent=False)
    s.subscriptions = {"a/+": 1, "#": 2, "a/b": 0}
    assert s.offer("a/b", b"x", 2)
    (send,) = s.take()
    assert send.message.qos == 2


def test_window_holds_messages_until_acknowledged_and_ids_are_not_reused_while_in_flight() -> None:
    s = session(t=1)
    for n in range(3):
        s.offer("t", bytes([n]), 1)
    first = s.take()
    assert [x.message.payload for x in first] == [b"\0", b"\1"]
    assert s.take() == []  # the window of 2 is full
    assert s.puback(first[0].packet_id or 0)
    (third,) = s.take()
    assert third.message.payload == b"\2"
    assert third.packet_id not in {first[1].packet_id}
    assert not s.puback(999)  # an id not in flight is ignored


def test_qos2_needs_pubrec_then_pubcomp_and_a_repeated_pubrec_is_answered_again() -> None:
    s = session(t=2)
    s.offer("t", b"x", 2)
    (send,) = s.take()
    pid = send.packet_id or 0
    assert not s.puback(pid)  # a PUBACK does not end a QoS 2 delivery
    assert s.pubrec(pid)
    assert s.pubrec(pid)
    assert pid in s.released
    s.pubcomp(pid)
    assert not s.released


def test_after_a_disconnect_messages_in_flight_go_out_again_with_dup_and_the_same_id() -> None:
    s = session(t=1)
    s.offer("t", b"x", 1)
    (sent,) = s.take()
    s.disconnected()
    s.offer("t", b"y", 1)
    again, new = s.take()
    assert (again.packet_id, again.dup, again.message.payload) == (sent.packet_id, True, b"x")
    assert (new.dup, new.message.payload) == (False, b"y")


def test_statuses_are_dropped_at_disconnect_and_read_again_from_the_cursor() -> None:
    s = session(outbox_a_status_x=1)
    s.offer("outbox/a/status/x", b"s1", 1, seq=5)
    s.offer("outbox/a/status/x", b"s2", 1, seq=6)
    first, _second = s.take()
    assert s.puback(first.packet_id or 0)
    assert s.status.position == 5
    s.disconnected()
    assert s.status.sent == 5  # seq 6 is read from the log again
    assert not s.inflight and not s.queue
    s.offer("outbox/a/status/x", b"s2", 1, seq=6)
    (resent,) = s.take()
    assert resent.dup  # it went out before


def test_other_messages_beyond_the_bound_drop_the_oldest_and_count_it() -> None:
    s = session(t=1)
    s.max_queued = 2
    for n in range(3):
        s.offer("t", bytes([n]), 1)
    assert [m.payload for m in s.queue] == [b"\1", b"\2"]
    assert s.dropped == 1


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40), st.randoms())
def test_status_cursor_position_is_the_last_seq_with_nothing_open_before_it(
    plan: list[tuple[bool, bool]], rng: object
) -> None:
    """Feed seqs 1..n, each wanted or not; ack the wanted ones in any order; position never passes an open one."""
    cursor = StatusCursor(0)
    opened: list[int] = []
    for seq, (wanted, _) in enumerate(plan, start=1):
        if wanted:
            cursor.opened(seq)
            opened.append(seq)
        else:
            cursor.passed(seq)
        assert cursor.position <= (min(opened) - 1 if opened else seq)
    rng.shuffle(opened)  # type: ignore[attr-defined]
    while opened:
        cursor.closed(opened.pop())
        assert cursor.position == (min(opened) - 1 if opened else len(plan))
    assert cursor.position == len(plan)


def test_with_a_principal_only_the_apps_own_statuses_match() -> None:
    s = Session("c", persistent=True, principal="appb")
    s.subscriptions = {"outbox/appa/status/#": 1, "outbox/appb/status/#": 1}
    assert s.granted_qos("outbox/appa/status/x") is None
    assert not s.offer("outbox/appa/status/x", b"x", 1, seq=1)
    assert s.offer("outbox/appb/status/y", b"y", 1, seq=2)


def test_a_message_past_its_expiry_is_deleted_unsent_and_one_in_flight_goes_again_with_what_is_left() -> None:
    s = session(t=1)
    s.offer("t", b"short", 1, expires=10.0)
    s.offer("t", b"long", 1, expires=100.0)
    s.offer("t", b"never", 1)
    sent = s.take(now=20.0)
    assert [(x.message.payload, x.expiry_s) for x in sent] == [(b"long", 80), (b"never", None)]
    s.disconnected()
    again = s.take(now=99.5)
    assert [(x.message.payload, x.dup, x.expiry_s) for x in again] == [(b"long", True, 1), (b"never", True, None)]


def test_the_properties_passed_on_count_against_the_byte_bound() -> None:
    s = Session("c", persistent=True, max_queued_bytes=1000)
    s.subscriptions = {"t": 1}
    heavy = Passed(user_properties=(("k", "v" * 600),))
    s.offer("t", b"a", 1, props=heavy)
    s.offer("t", b"b", 1, props=heavy)  # the two do not fit: the oldest goes
    assert [m.payload for m in s.queue] == [b"b"] and s.dropped == 1
    assert s.queued_bytes == len("t") + 1 + 601


def test_subscription_options_no_local_retain_as_published_and_retain_handling() -> None:
    s = Session("c", persistent=False)
    assert s.subscribe("a/#", 1 | NO_LOCAL)
    assert not s.offer("a/b", b"own", 1, own=True)
    assert s.offer("a/b", b"theirs", 1, retain=True)  # its RETAIN flag dropped: not retain as published
    assert s.subscribe("r/#", 1 | RETAIN_AS_PUBLISHED)
    assert s.offer("r/x", b"kept", 0, retain=True)
    assert [(m.payload, m.qos, m.retain) for m in s.queue] == [(b"theirs", 1, False), (b"kept", 0, True)]
    assert not s.subscribe("n/#", 2 | SEND_RETAINED_NEVER)
    assert s.subscribe("i/#", 2 | SEND_RETAINED_IF_NEW) and not s.subscribe("i/#", 2 | SEND_RETAINED_IF_NEW)
    assert s.granted_qos("i/1") == 2
