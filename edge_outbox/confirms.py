"""Final results the edge applied, confirmed to the bridge: each id once, a batch at a time, kept across links.

The bridge re-sends every unconfirmed result at each (re)subscribe, so a list kept across a link that failed
before its confirms went out gained a copy of the whole set per reconnect, without bound while each link failed
so: an id is kept once (an ordered set), with the newest attempt of its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiomqtt

from edge_outbox.cancelling import raise_if_cancelled
from edge_outbox.forward_wire import confirm_groups
from intent_contract.codec import encode_confirms
from intent_contract.wire import CONFIRMS_PER_MESSAGE

# Results arriving this close together are confirmed in one message: the bridge sends one message per result,
# and one confirm per result would fill the device's queue at the bridge, which then drops messages, intent
# batches included.
CONFIRM_DELAY_S = 0.2


class Confirms:
    """Ids to confirm on `topic`, and the loop that sends them on each link."""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._pending: dict[str, int] = {}  # id -> the attempt of its result (0: the bridge did not say)
        self._wake = asyncio.Event()

    def add(self, final: Iterable[tuple[str, int]]) -> None:
        """Results applied (id, attempt): confirmed at the next send."""
        for intent_id, attempt in final:
            self._pending[intent_id] = max(attempt, self._pending.get(intent_id, 0))
        self._wake.set()

    async def loop(self, client: aiomqtt.Client) -> None:
        """Confirm what was added, a batch at a time, for as long as the link lasts (repeats are harmless); what
        a failed link did not send goes on the next."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(CONFIRM_DELAY_S)
            self._wake.clear()
            taken, self._pending = self._pending, {}
            try:
                for attempt, ids in confirm_groups(taken).items():
                    for start in range(0, len(ids), CONFIRMS_PER_MESSAGE):
                        body = encode_confirms(ids[start : start + CONFIRMS_PER_MESSAGE], attempt or None)
                        await client.publish(self._topic, body, qos=1)
                        raise_if_cancelled()
            except BaseException:
                self.add(taken.items())
                raise
