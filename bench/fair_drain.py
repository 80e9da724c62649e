"""Fair drain: how long one tenant's burst waits when another tenant floods the same provider.

`python -m bench.fair_drain [--store sqlite|postgresql] [--flood 2000] [--burst 20] [--delay-ms 5]
[--concurrency 4] [--runs 3]` runs the bridge's executor in this process over a fresh store (SQLite in a
temporary directory, or a PostgreSQL database made for the run on OUTBOX_TEST_PG's server and dropped
after it), against the local HTTP sink in a child process answering each request after `--delay-ms`
(a slow provider), through the real http.request integration with `--concurrency` slots. Per run:

- alone: tenant bravo's burst on an idle bridge; its latency is admission to the last result;
- flood: tenant acme queues `--flood` intents and the executor drains them; after acme's first 40
  results bravo's burst is admitted; its latency, and how many of acme's had ended by then;
- CPU per intent of this process (executor, integration, store client; SQLite's writer thread too),
  draining the flood and the burst to the end, against one tenant draining as many (what sharing
  costs: one `waiting_tenants` query and a claim per tenant per fill instead of one claim); that
  drain's duration is what the burst would wait behind the flood with oldest-first claims.

It prints a Markdown table (median and range over the runs). Nothing is gated on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Proc, free_port
from bench.stack import SINK_TOKEN_ENV, payload
from cloud_bridge.executor import Executor
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.ledger import Ledger
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store import open_store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Ack, AckState, Envelope

HEAD_START = 40
ACME = DeviceRef("bench-acme", "acme", "boiler-1")
BRAVO = DeviceRef("bench-bravo", "bravo", "pump-1")
PG_ADMIN = os.environ.get("OUTBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _allow(_: Envelope) -> Decision:
    return Decision(True)


def _batch(prefix: str, count: int) -> list[Envelope]:
    created = int(time.time() * 1000)
    return [Envelope(f"{prefix}-{n:06d}", "bench", "http.request", created, None, 1, payload(n)) for n in range(count)]


async def _admit(ledger: Ledger, device: DeviceRef, envelopes: list[Envelope]) -> None:
    for start in range(0, len(envelopes), 500):
        now = time.time()
        requests = requests_for(envelopes[start : start + 500], _allow, now, DEFAULT_MAX_AGE)
        acks = await ledger.admit(device, requests, now)
        assert all(a.state is AckState.ACCEPTED for a in acks), acks[:3]


@dataclass
class _Ends:
    """Results as they end, per tenant, with a wake-up when a count is reached."""

    counts: dict[str, int] = field(default_factory=lambda: {"acme": 0, "bravo": 0})
    last: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_final(self, device_id: str, ack: Ack) -> None:
        tenant = "acme" if device_id == ACME.device_id else "bravo"
        if ack.state is not AckState.DELIVERED:
            raise RuntimeError(f"{ack.id} ended {ack.state} {ack.code}")
        self.counts[tenant] += 1
        self.last[tenant] = time.perf_counter()
        self.changed.set()

    async def until(self, tenant: str, count: int) -> None:
        while self.counts[tenant] < count:
            self.changed.clear()
            await self.changed.wait()


@contextlib.contextmanager
def _pg_database() -> Iterator[StoreUrl]:
    import secrets  # noqa: PLC0415 - only for PostgreSQL runs

    import psycopg  # noqa: PLC0415

    name = f"bench_fair_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield StoreUrl.parse(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def _bridge(backend: str, port: int, concurrency: int, ends: _Ends) -> AsyncIterator[tuple[Ledger, Executor]]:
    """A fresh store and an executor (not started) on the http.request integration to the sink."""
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = StoreUrl.sqlite(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fair-"))))
        else:
            url = stack.enter_context(_pg_database())
        store = open_store(url, node="bench")
        await store.open()
        section = {
            "concurrency": concurrency,
            "allow_private_hosts": ["127.0.0.1"],
            "credentials": {"sink": {"base_urls": [f"http://127.0.0.1:{port}/"], "methods": ["POST"],
                                     "token_env": SINK_TOKEN_ENV}},
        }  # fmt: skip
        http = HttpIntegration.from_config(section, {SINK_TOKEN_ENV: "bench-dummy-token"})
        executor = Executor(store.ledger, {"http.request": http}, on_final=ends.on_final, owner="bench")
        try:
            yield store.ledger, executor
        finally:
            await executor.stop()
            await http.aclose()
            await store.close()


async def _alone(backend: str, port: int, args: argparse.Namespace) -> float:
    """bravo's burst on an idle bridge: seconds from its admission to its last result."""
    ends = _Ends()
    async with _bridge(backend, port, args.concurrency, ends) as (ledger, executor):
        await executor.start()
        started = time.perf_counter()
        await _admit(ledger, BRAVO, _batch("bravo", args.burst))
        executor.wake()
        await ends.until("bravo", args.burst)
        return ends.last["bravo"] - started


async def _flood(backend: str, port: int, args: argparse.Namespace) -> tuple[float, int, float]:
    """(bravo's latency, acme's results by then, CPU us per intent draining both to the end)."""
    ends = _Ends()
    async with _bridge(backend, port, args.concurrency, ends) as (ledger, executor):
        await _admit(ledger, ACME, _batch("acme", args.flood))
        cpu = time.process_time()
        await executor.start()
        await ends.until("acme", HEAD_START)
        started = time.perf_counter()
        await _admit(ledger, BRAVO, _batch("bravo", args.burst))
        executor.wake()
        await ends.until("bravo", args.burst)
        latency, acme_by_then = ends.last["bravo"] - started, ends.counts["acme"]
        await ends.until("acme", args.flood)
        used = time.process_time() - cpu
    return latency, acme_by_then, used / (args.flood + args.burst) * 1e6


async def _one_tenant(backend: str, port: int, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds, CPU us per intent) of one tenant draining as many intents as the flood and the burst together:
    the wait of a burst queued behind the flood if claims were oldest first."""
    ends = _Ends()
    total = args.flood + args.burst
    async with _bridge(backend, port, args.concurrency, ends) as (ledger, executor):
        await _admit(ledger, ACME, _batch("acme", total))
        cpu, started = time.process_time(), time.perf_counter()
        await executor.start()
        await ends.until("acme", total)
        used = time.process_time() - cpu
    return ends.last["acme"] - started, used / total * 1e6


def _cell(values: list[float], unit: str, digits: int = 2) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} {unit} ({min(values):,.{digits}f} - {max(values):,.{digits}f})"


async def _main(args: argparse.Namespace) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-fair-sink-") as work:
        sink = Proc("httpsink", [sys.executable, "-m", "bench.httpsink", str(port), str(args.delay_ms)], Path(work))
        sink.wait_port(port)
        try:
            alone, flood, acme_done, fair_cpu, one_cpu, behind = [], [], [], [], [], []
            for _ in range(args.runs):  # interleaved, so a slower moment of the machine hits each alike
                alone.append(await _alone(args.store, port, args))
                latency, done, cpu = await _flood(args.store, port, args)
                flood.append(latency)
                acme_done.append(float(done))
                fair_cpu.append(cpu)
                seconds, cpu = await _one_tenant(args.store, port, args)
                behind.append(seconds)
                one_cpu.append(cpu)
        finally:
            sink.stop()
    ratios = [f / a for f, a in zip(flood, alone, strict=True)]
    print(f"Fair drain on {args.store}: acme floods {args.flood:,}, then bravo sends {args.burst}; provider answers "
          f"after {args.delay_ms} ms, {args.concurrency} slots; {args.runs} runs, median (range)\n")  # fmt: skip
    print("| figure | value |")
    print("|---|---:|")
    print(f"| bravo's burst, admission to last result, bridge idle | {_cell(alone, 's', 3)} |")
    print(f"| bravo's burst, admission to last result, acme flooding | {_cell(flood, 's', 3)} |")
    print(f"| ratio flooding / idle | {_cell(ratios, 'x')} |")
    print(f"| the whole flood and burst drained by one tenant (a burst's wait behind it, oldest first) "
          f"| {_cell(behind, 's', 3)} |")  # fmt: skip
    print(f"| acme's results when bravo's last ended (of {args.flood:,}; {HEAD_START} before bravo's admission) "
          f"| {_cell(acme_done, '', 0)} |")  # fmt: skip
    print(f"| CPU per intent, two tenants sharing (this process) | {_cell(fair_cpu, 'us', 0)} |")
    print(f"| CPU per intent, one tenant, same total | {_cell(one_cpu, 'us', 0)} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
