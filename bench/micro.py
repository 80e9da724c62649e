"""Micro-benchmarks of five hot paths, each against its floor (or its predecessor) measured in the same run.

`python -m bench.micro` prints CPU microseconds per intent (median of 5 repetitions):
- decoding a 500-intent batch at the bridge (`decode_batch`: a valid batch takes the typed lane,
  msgspec with the payload schemas and the limits' walk, F50) against msgpack's bare unpack of the same bytes;
- an `http.request` through `HttpIntegration.execute` (credential, URL scope, SSRF check, aiohttp
  with the guarded resolver) against a bare aiohttp session, both to the local HTTP sink at 16
  concurrent requests;
- claiming queued rows on the SQLite ledger, 16 a claim, as the executor gets them (the claim's UPDATE
  and a `LedgerEntry` per row) against one UPDATE of the same rows;
- admitting judged 500-intent batches on the SQLite ledger (`admit_plan`: the existing rows read, the
  plan, the rows, audit rows and usage written) against the INSERT statements of the same rows alone;
- reading an app's intent as the edge's intake does (`json_bounded.loads`: orjson within the limits)
  against the standard `json.loads` it replaced.
The findings in BENCHMARKS.md quote these (F7, F8, F44, F46, F47); the benchmark gates nothing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import aiohttp
import msgpack

from bench.procs import Proc, free_port
from bench.stack import SINK_TOKEN_ENV, intent_body, payload
from cloud_bridge.integrations.base import Job
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.ledger import pack
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, Request, requests_for
from cloud_bridge.ledger_sqlite_admit import _UPSERT, admit_plan
from cloud_bridge.ledger_sqlite_jobs import claim_rows
from cloud_bridge.ledger_sqlite_schema import migrate
from cloud_bridge.policy import Decision, DeviceRef
from intent_contract import json_bounded
from intent_contract.codec import Envelope, decode_batch, encode_batch

BATCH = 500
REQUESTS = 4000
CLAIMS = 250  # of CLAIM_ROWS each
CLAIM_ROWS = 16
CONCURRENCY = 16
ADMIT_BATCHES = 10  # of BATCH intents, per repetition
REPEATS = 5
JSON_INTENTS = 20_000

T = TypeVar("T")


def _cpu_us_per(count: int, fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / count * 1e6


def decode_figures() -> tuple[float, float]:
    """(decode_batch, bare msgpack) CPU us per intent."""
    data = encode_batch(
        [Envelope(f"id-{i}", "bench-app", "http.request", 1_700_000_000_000, None, 1, payload(i)) for i in range(BATCH)]
    )
    ours = [_cpu_us_per(BATCH * 20, lambda: [decode_batch(data) for _ in range(20)]) for _ in range(REPEATS)]
    floor = [_cpu_us_per(BATCH * 20, lambda: [msgpack.unpackb(data) for _ in range(20)]) for _ in range(REPEATS)]
    return statistics.median(ours), statistics.median(floor)


def _ledger() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    migrate(conn, at_start=True)
    return conn


def admit_figures() -> tuple[float, float]:
    """(admitting judged batches on the SQLite ledger, inserting the same rows alone) CPU us per intent."""
    conn = _ledger()
    device, allowed, now = DeviceRef("bench-device", "bench-tenant", "bench"), Decision(True), time.time()

    def judged(name: str) -> list[list[Request]]:
        """ADMIT_BATCHES batches of new ids (`name` keeps them apart), decoded and judged as the bridge does."""
        envelopes = [
            [Envelope(f"{name}-{b}-{i}", "bench-app", "http.request", int(now * 1000), None, 1, payload(i))
             for i in range(BATCH)]
            for b in range(ADMIT_BATCHES)
        ]  # fmt: skip
        batches = [decode_batch(encode_batch(batch)).envelopes for batch in envelopes]
        return [requests_for(batch, lambda _envelope: allowed, now, DEFAULT_MAX_AGE) for batch in batches]

    def transactions(write: Callable[[T], object], batches: Sequence[T]) -> Callable[[], None]:
        gc.collect()  # the garbage of building the batches is not the admission's

        def run() -> None:
            for batch in batches:
                conn.execute("BEGIN")
                write(batch)
                conn.execute("COMMIT")

        return run

    ours, floor = [], []
    for n in range(REPEATS):
        requests = judged(f"ours-{n}")
        ours.append(
            _cpu_us_per(BATCH * ADMIT_BATCHES, transactions(lambda b: admit_plan(conn, device, b, now), requests))
        )
        rows = [
            [(device.device_id, r.envelope.id, device.tenant, r.envelope.app, r.envelope.kind, pack(r.envelope.payload),
              1, 0, r.envelope.created, None, "queued", "", "", now, pack({}), now, r.digest) for r in batch]
            for batch in judged(f"floor-{n}")
        ]  # fmt: skip
        floor.append(_cpu_us_per(BATCH * ADMIT_BATCHES, transactions(lambda b: _UPSERT.run(conn, b), rows)))
    return statistics.median(ours), statistics.median(floor)


def json_figures() -> tuple[float, float]:
    """(json_bounded.loads, the standard json.loads) CPU us per intent, on `bench.stack.intent_body` intents."""
    bodies = [intent_body(n, f"bench-{n}") for n in range(JSON_INTENTS)]

    def read(parse: Callable[[bytes], object]) -> Callable[[], None]:
        def run() -> None:
            for body in bodies:
                parse(body)

        return run

    ours = [_cpu_us_per(JSON_INTENTS, read(lambda b: json_bounded.loads(b, max_bytes=1 << 18))) for _ in range(REPEATS)]
    standard = [_cpu_us_per(JSON_INTENTS, read(json.loads)) for _ in range(REPEATS)]
    return statistics.median(ours), statistics.median(standard)


def claim_figures() -> tuple[float, float]:
    """(claiming a row as the executor gets it, an UPDATE of the same rows) CPU us per row."""
    conn = _ledger()
    conn.executemany(
        "INSERT INTO intents (device_id, intent_id, tenant, app, kind, payload, attempt, priority, created, expires,"
        " state, code, detail, tries, next_run, overrides, confirmed, updated) VALUES ('bench-device', ?, '',"
        " 'bench-app', 'http.request', ?, 1, 0, 1700000000000, NULL, 'queued', '', '', 0, 0, ?, 0, 0)",
        [(f"id-{i}", pack(payload(i)), pack({})) for i in range(CLAIMS * CLAIM_ROWS)],
    )
    rows = conn.execute("SELECT * FROM intents ORDER BY seq").fetchall()
    claims = [rows[i : i + CLAIM_ROWS] for i in range(0, len(rows), CLAIM_ROWS)]
    update = f"UPDATE intents SET tries = tries + 1 WHERE seq IN ({', '.join('?' * CLAIM_ROWS)})"

    def ours() -> None:
        for claim in claims:
            claim_rows(conn, claim, "bench-node", 1_700_000_060.0, 1_700_000_000.0)

    def floor() -> None:
        for claim in claims:
            conn.execute(update, [row["seq"] for row in claim])

    count = CLAIMS * CLAIM_ROWS
    return (
        statistics.median(_cpu_us_per(count, ours) for _ in range(REPEATS)),
        statistics.median(_cpu_us_per(count, floor) for _ in range(REPEATS)),
    )


async def _concurrently(send: Callable[[int], Awaitable[None]]) -> float:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with slots:
            await send(n)

    await asyncio.gather(*(one(n) for n in range(CONCURRENCY)))  # warm: connections open
    start = time.process_time()
    await asyncio.gather(*(one(n) for n in range(REQUESTS)))
    return (time.process_time() - start) / REQUESTS * 1e6


async def http_figures(port: int) -> tuple[float, float]:
    """(HttpIntegration.execute, bare aiohttp) CPU us per request."""
    section = {
        "concurrency": CONCURRENCY,
        "allow_private_hosts": ["127.0.0.1"],
        "credentials": {
            "sink": {
                "base_urls": [f"http://127.0.0.1:{port}/"],
                "methods": ["POST"],
                "auth": "bearer",
                "token_env": SINK_TOKEN_ENV,
            }
        },
    }
    integration = HttpIntegration.from_config(section, {SINK_TOKEN_ENV: "bench-dummy-token"})

    async def ours(n: int) -> None:
        await integration.execute(Job("dev-1", "bench", f"i-{n}", "http.request", payload(n), 1, {}))

    url = f"http://127.0.0.1:{port}/hook"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def bare(n: int) -> None:
            headers = {"Authorization": "Bearer bench-dummy-token", "Idempotency-Key": f"i-{n}"}
            async with session.post(url, json=payload(n)["json"], headers=headers) as response:
                await response.read()

        try:
            results = [(await _concurrently(ours), await _concurrently(bare)) for _ in range(REPEATS)]
        finally:
            await integration.aclose()
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def main() -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-micro-") as work:
        sink = Proc("httpsink", [sys.executable, "-m", "bench.httpsink", str(port)], Path(work)).wait_port(port)
        try:
            decode, unpack = decode_figures()
            claim, update = claim_figures()
            admit, insert = admit_figures()
            bounded, standard = json_figures()
            execute, bare = asyncio.run(http_figures(port))
        finally:
            sink.stop()
    print("| path | CPU per intent | floor (same run) | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| decode_batch, {BATCH}-intent batch | {decode:.1f} us | {unpack:.1f} us (msgpack.unpackb) "
        f"| {decode / unpack:.1f}x |"
    )
    print(
        f"| http.request via HttpIntegration.execute, {CONCURRENCY} concurrent | {execute:.0f} us "
        f"| {bare:.0f} us (bare aiohttp session) | {execute / bare:.1f}x |"
    )
    print(
        f"| claim on SQLite, {CLAIM_ROWS} rows a claim, per row | {claim:.1f} us "
        f"| {update:.1f} us (an UPDATE of the rows) | {claim / update:.1f}x |"
    )
    print(
        f"| admission on SQLite, {BATCH}-intent batches, per intent | {admit:.1f} us "
        f"| {insert:.1f} us (the rows' INSERT alone) | {admit / insert:.1f}x |"
    )
    print(
        f"| an intent's JSON at the edge's intake (json_bounded.loads) | {bounded:.2f} us "
        f"| {standard:.2f} us (the standard json.loads it replaced) | {bounded / standard:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
