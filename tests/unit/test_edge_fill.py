"""A replay request is read and queued in steps of REPLAY_CHUNK: only what the session subscribes to is
queued, at QoS 1 at most, and the request ends after a short step."""

from __future__ import annotations

import asyncio

from edge_outbox.mqtt.fill import REPLAY_CHUNK, Replay, queue_replay
from edge_outbox.mqtt.session import Session


def test_a_replay_goes_in_steps_and_queues_only_what_the_session_subscribes_to() -> None:
    stored = [(seq, f"outbox/{'app' if seq % 2 else 'other'}/status/i{seq}", b"{}") for seq in range(1, 1201)]
    reads: list[tuple[str, int, int]] = []

    async def read(app: str, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        reads.append((app, after, limit))
        return [row for row in stored if row[0] > after][:limit]

    session = Session("c-1", persistent=False, subscriptions={"outbox/app/status/#": 2}, max_queued=10_000)
    replay = Replay("app", 0)
    done = [asyncio.run(queue_replay(session, replay, read)) for _ in range(3)]

    assert done == [False, False, True]
    assert [after for _app, after, _limit in reads] == [0, REPLAY_CHUNK, 2 * REPLAY_CHUNK]
    assert replay.sent == len(session.queue) == 600 and replay.after == 1200
    assert {m.qos for m in session.queue} == {1} and all("/app/" in m.topic for m in session.queue)
