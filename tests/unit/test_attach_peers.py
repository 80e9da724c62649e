"""The decision on another outbox's hello in attach mode (edge_outbox.attach_peers), without a broker."""

import orjson

from edge_outbox.attach_peers import ANSWERED_MAX, Peers, hello


def payload(client_id: str, *, answer: bool = False) -> bytes:
    return hello(client_id, answer=answer)


def test_our_own_hello_and_garbage_are_no_peer() -> None:
    peers = Peers("me")
    for raw in (payload("me"), b"", b"not json", b"[1]", b'{"attached": 5}', b"x" * 2000):
        assert peers.heard(raw, 0.0) == (None, 0, None)


def test_another_outbox_is_named_and_answered_once_per_connection() -> None:
    peers = Peers("me")
    first = peers.heard(payload("other"), 0.0)
    assert first.peer == "other"
    assert first.answer is not None
    assert orjson.loads(first.answer[first.answer.index(b"{") :]) == {"attached": "me", "answer": True}
    assert peers.heard(payload("other"), 100.0) == ("other", 0, None)  # named again, not answered again
    peers.connected()
    assert peers.heard(payload("other"), 200.0).answer is not None


def test_an_answer_is_named_not_answered_and_lines_are_throttled() -> None:
    peers = Peers("me")
    assert peers.heard(payload("other", answer=True), 0.0) == ("other", 0, None)
    assert peers.heard(payload("third", answer=True), 1.0) == (None, 0, None)  # within the interval: left out
    assert peers.heard(payload("third", answer=True), 100.0) == ("third", 1, None)


def test_forged_hellos_get_a_bounded_number_of_answers() -> None:
    peers = Peers("me")
    answers = [peers.heard(payload(f"forged-{n}"), 0.0).answer for n in range(ANSWERED_MAX * 4)]
    assert sum(a is not None for a in answers) == ANSWERED_MAX
