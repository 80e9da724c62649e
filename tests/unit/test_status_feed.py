"""The status feed serves recent events from memory and older ones from the store, in order, without gaps."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.db import StatusEvent
from edge_outbox.states import State
from edge_outbox.status import StatusFeed, status_payload
from intent_contract.timefmt import format_ms


def event(seq: int) -> StatusEvent:
    return StatusEvent(seq, f"i-{seq}", "app", "email.send", State.ACCEPTED, "", "", 1_700_000_000_000)


async def test_reads_cross_from_the_database_into_memory_without_gaps() -> None:
    stored = [event(n) for n in range(1, 101)]
    reads: list[tuple[int, int]] = []

    async def read_after(after: int, limit: int) -> list[StatusEvent]:
        reads.append((after, limit))
        return [e for e in stored if e.seq > after][:limit]

    feed = StatusFeed(read_after, head=40, keep=10)
    woken: list[int] = []
    feed.listen(lambda: woken.append(feed.head))
    for start in range(41, 101, 7):  # events arrive in groups, as group commits hand them over
        feed.on_events([event(n) for n in range(start, min(start + 7, 101))])
    assert feed.head == 100
    assert woken[-1] == 100
    seen: list[int] = []
    position = 0
    while position < feed.head:
        got = await feed.read(position, 16)
        assert got, f"nothing after {position}"
        seen.extend(e.seq for e in got)
        position = got[-1].seq
    assert seen == list(range(1, 101))
    assert reads, "old events must come from the database"
    assert all(after < 90 for after, _ in reads), f"the newest events were read from the database: {reads}"


async def test_nothing_to_read_at_the_head_and_repeated_events_are_ignored() -> None:
    async def never(after: int, limit: int) -> list[StatusEvent]:
        raise AssertionError("no database read expected")

    feed = StatusFeed(never, head=0)
    feed.on_events([event(1), event(2)])
    feed.on_events([event(2)])
    assert [e.seq for e in await feed.read(0, 10)] == [1, 2]
    assert await feed.read(2, 10) == []


async def test_events_skipped_while_nobody_read_are_read_from_the_database() -> None:
    stored = [event(n) for n in range(1, 31)]
    reads: list[int] = []

    async def read_after(after: int, limit: int) -> list[StatusEvent]:
        reads.append(after)
        return [e for e in stored if e.seq > after][:limit]

    feed = StatusFeed(read_after, head=0)
    woken: list[int] = []
    feed.listen(lambda: woken.append(feed.head))
    feed.on_events(stored[:10])
    feed.skip_to(20)  # 11-20 committed while no consumer wanted them: not in memory
    assert feed.head == 20 and woken == [10, 20]
    feed.on_events(stored[20:])
    seen: list[int] = []
    position = 0
    while position < feed.head:
        got = await feed.read(position, 8)
        seen.extend(e.seq for e in got)
        position = got[-1].seq
    assert seen == list(range(1, 31))
    assert reads and max(reads) < 20, f"only what was skipped (or older) comes from the database: {reads}"
    assert [e.seq for e in await feed.read(20, 100)] == list(range(21, 31))
    assert max(reads) < 20


@given(
    st.integers(1, 2**63 - 1),
    st.text(),
    st.text(),
    st.sampled_from(list(State)),
    st.text(),
    st.text(),
    st.integers(0, 253_402_300_799_999),  # to the end of year 9999
)
def test_a_status_message_is_the_json_of_its_fields(
    seq: int, intent_id: str, kind: str, state: State, code: str, detail: str, at: int
) -> None:
    # Any text, quotes, controls and non-ASCII included: the payload is written out, not built by json.
    event = StatusEvent(seq, intent_id, "app", kind, state, code, detail, at)
    body = {"id": intent_id, "kind": kind, "state": state.value, "code": code, "detail": detail,
            "at": format_ms(at), "seq": seq}  # fmt: skip
    assert status_payload(event) == json.dumps(body, separators=(",", ":")).encode()
