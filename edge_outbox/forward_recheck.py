"""Intents the bridge has (`forwarded`) sent to it once more after the outbox starts: their result may never come.

The bridge sends again every result the edge has not confirmed, so while both keep their data a `forwarded`
intent always hears its result. A data dir restored from a backup holds intents `forwarded` whose results
the outbox received and confirmed after the backup was taken: the bridge never sends those again, and they
stayed `forwarded` for ever (their apps never heard a final status). Sent again, each is a duplicate at the
bridge, acked with its row's state (the result, or `accepted` while it waits) and never run again
(cloud_bridge.ledger_plan).

Once per forwarder (an outbox start, a reload): the intents `forwarded` that were last sent before it began,
walked by seq in windows of SCAN rows, so that no store operation reads more than that while the rest of
the store waits. Each one sent is marked sent now, so it is not sent twice in the walk.
"""

from __future__ import annotations

import sqlite3

from edge_outbox.db import SELECT_ROW, IntentRow
from edge_outbox.states import PENDING, sql_set
from edge_outbox.store import Store

SCAN = 5_000  # rows of the intents table one store operation looks through at most


class Recheck:
    """The walk's position; `batch` is run inside the store's group commit (edge_outbox.store)."""

    def __init__(self, since_ms: int) -> None:
        self._since = since_ms  # intents last sent before this, forwarded, are sent again
        self._after = 0  # seq: every row up to here is looked at
        self._end: int | None = None  # the last seq when the walk began (later rows were sent after it)

    async def take(self, store: Store, limit: int, max_bytes: int, now: int) -> list[IntentRow]:
        """`batch` until it finds some or the walk is done, each window a store operation of its own."""
        rows: list[IntentRow] = []
        while not rows and not self.done:
            rows = await store.call(self.batch, limit=limit, max_bytes=max_bytes, now=now)
        return rows

    @property
    def done(self) -> bool:
        return self._end is not None and self._after >= self._end

    def batch(self, conn: sqlite3.Connection, *, limit: int, max_bytes: int, now: int) -> list[IntentRow]:
        """Up to `limit` forwarded intents of the next window (at least one, `max_bytes` of payload) to send
        again, marked sent; none from a window that has none, so ask again until `done`."""
        if self._end is None:
            first, self._end = conn.execute(
                "SELECT COALESCE(MIN(seq), 1), COALESCE(MAX(seq), 0) FROM intents"
            ).fetchone()
            self._after = int(first) - 1
        batch: list[IntentRow] = []
        used = 0
        if not self.done:  # one window of at most SCAN rows per call: the caller asks again until done
            upto = min(self._after + SCAN, self._end)
            rows = [
                IntentRow.from_db(raw)
                for raw in conn.execute(
                    f"{SELECT_ROW} WHERE seq > ? AND seq <= ? AND state = 'forwarded' AND sent_at < ?"
                    " ORDER BY seq LIMIT ?",
                    (self._after, upto, self._since, limit),
                )
            ]
            if len(rows) == limit:  # the window may hold more: go on after the last one taken
                upto = rows[-1].seq
            for row in rows:
                if batch and used + row.size > max_bytes:
                    upto = row.seq - 1  # it leads the next batch
                    break
                batch.append(row)
                used += row.size
            self._after = upto
        conn.executemany(
            f"UPDATE intents SET sent_at = ? WHERE seq = ? AND state IN {sql_set(PENDING)}",
            [(now, row.seq) for row in batch],
        )
        return batch
