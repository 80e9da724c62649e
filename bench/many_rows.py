"""Inserting intents one statement per row against `ManyRows` (bench/findings.md F30, F32), in-process.

    python -m bench.many_rows [--seconds 4]

Inserts batches of 500 rows into the edge's schema (with its triggers), each batch one transaction, for
`--seconds`: one `execute` per row, then `ManyRows.into(...).insert`. Each runs twice: alone, and beside
a thread that runs Python without pause (as a busy event loop does), which must take the GIL from it.
Prints rows per second and the inserting thread's CPU per row. Then the edge's own operations on
30,000 intents: `ops.commit_intakes` in batches of 500 and `forward_ops.next_batch` of 500, CPU per intent (run
it with PYTHONPATH at an older checkout, from F30 on, for the "before").
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_outbox import db, forward_ops, ops
from edge_outbox.intake_rules import Admitted, Refused
from intent_contract.sqlite_rows import ManyRows

BATCH = 500
_ONE = f"INSERT INTO intents({', '.join(db.COLUMNS[1:])}) VALUES ({', '.join('?' * (len(db.COLUMNS) - 1))})"
_MANY = ManyRows.into("intents", db.COLUMNS[1:])


def _one_by_one(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    for row in rows:
        conn.execute(_ONE, row)


def _together(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    _MANY.insert(conn, rows)


Insert = Callable[[sqlite3.Connection, Sequence[tuple[object, ...]]], None]


def measure(insert: Insert, busy: bool, seconds: float) -> str:
    conn = db.connect(Path(tempfile.mkdtemp(prefix="many-rows-")))
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    if busy:
        threading.Thread(target=spin, daemon=True).start()
    made = 0
    start, cpu = time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        rows = [(f"id{made + i:012d}", "app", "email.send", "accepted", "", "", 0, 1, None, 1, 1, 0, 0, 0,
                 b"x" * 300, 300) for i in range(BATCH)]  # fmt: skip
        conn.execute("BEGIN IMMEDIATE")
        insert(conn, rows)
        conn.execute("COMMIT")
        made += BATCH
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
    stop.set()
    conn.close()
    return f"{made / wall:>9,.0f} rows/s, {cpu / made * 1e6:6.1f} us CPU per row"


def store_ops() -> str:
    """CPU per intent of the edge's intake commit and of reading a batch to send, in-process."""
    conn = db.connect(Path(tempfile.mkdtemp(prefix="many-rows-")))
    body = b'{"to": "ops@example.com", "subject": "S", "text": "t"}'
    cpu, made = 0.0, 0
    for _ in range(60):
        items: list[Admitted | Refused] = [
            Admitted(f"i{made + i:09d}", "app", "email.send", body, 0, 1, None, False) for i in range(BATCH)
        ]
        start = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        ops.commit_intakes(conn, items, ops.QueueLimits(), 1)
        conn.execute("COMMIT")
        cpu += time.process_time() - start
        made += BATCH
    start, read = time.process_time(), 0
    for _ in range(20):
        read += len(forward_ops.next_batch(conn, limit=BATCH, max_bytes=1 << 30, sent_before=1 << 62))
    reading = time.process_time() - start
    conn.close()
    return f"commit_intakes {cpu / made * 1e6:.1f} us per intent, next_batch {reading / read * 1e6:.2f} us per row"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    for name, insert in (("one execute per row", _one_by_one), ("ManyRows", _together)):
        for busy in (False, True):
            where = "beside a busy thread" if busy else "alone"
            print(f"{name:>20}, {where:>20}: {measure(insert, busy, args.seconds)}")
    print(f"the edge's store operations: {store_ops()}")


if __name__ == "__main__":
    main()
