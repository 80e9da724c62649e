"""The fleet tables (device states, report history, connect telemetry, diagnose requests) against every
store backend; "nodes" are two stores opened on the same URL, as two bridge processes would."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloud_bridge.fleet import (
    HISTORY_AGE_S,
    HISTORY_PER_DEVICE,
    HOUR_S,
    Flush,
    Received,
    RequestState,
    Sighting,
    hour_of,
)
from cloud_bridge.fleet_schema import FLEET_DB
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.ratelimit import Limits
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from intent_contract.device_wire import Diagnosis, ErrorLine, FailingKind, HealthReport, LinkStats
from tests.support.stores import admit, opened, store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0  # an hour boundary: 1_800_000_000 / 3600 = 500_000


def report(pending: int = 3, at_ms: int = int(NOW * 1000) - 7_200_000) -> HealthReport:
    return HealthReport(
        at=at_ms, software="0.1.0", counts={"accepted": pending}, sizes={"accepted": 10 * pending}, pending=pending,
        pending_bytes=10 * pending, oldest_pending_age_ms=60_000, max_items=0, max_bytes=0, db_bytes=4096,
        free_bytes=None, held=0, held_for_ms=None, held_reason="", link=LinkStats("connected", 1, 2, 3, 0.5, 1, 0),
        last_error=ErrorLine(5, "bridge_unreachable", "refused"), clock_offset_ms=0,
    )  # fmt: skip


def test_sessions_reports_and_refusals_are_kept_per_device(store: Store) -> None:
    fleet = store.fleet
    assert fleet.states() == {} and fleet.nodes() == {}
    before = time.time()
    fleet.flush(
        Flush(
            "node-a",
            NOW,
            sightings=(
                Sighting("dev-1", NOW - 2, "192.0.2.7"),
                Sighting("dev-2", NOW - 1, "192.0.2.8", "token_expired"),
            ),
            reports=(Received("dev-1", NOW - 1, report(), history=True),),
            held=("dev-1",),
        )
    )
    states = fleet.states()
    one, two = states["dev-1"], states["dev-2"]
    assert (one.node, one.connected_at, one.address) == ("node-a", NOW - 2, "192.0.2.7")
    assert one.report == report() and one.report_at == NOW - 1
    assert one.offset_ms == 7_200_000 - 1000  # the edge's clock is two hours behind, measured on arrival
    assert (two.node, two.refused_code, two.refused_at, two.report) == ("", "token_expired", NOW - 1, None)
    # The heartbeat is the store's time of the write (on this process's clock), not the node's `now`: clocks differ.
    [(node, heartbeat)] = fleet.nodes().items()
    assert node == "node-a" and before - 1 <= heartbeat <= time.time() + 1
    assert [h.report for h in fleet.history("dev-1", 10)] == [report()]
    assert fleet.states(["dev-2", "nope"]) == {"dev-2": two}


async def test_a_session_that_moved_to_another_node_is_not_ended_by_the_first(store_url: StoreUrl) -> None:
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        a.fleet.flush(Flush("node-a", NOW, held=("dev-1",)))
        b.fleet.flush(Flush("node-b", NOW + 1, held=("dev-1",)))
        a.fleet.flush(Flush("node-a", NOW + 2, released=("dev-1",)))  # node A saw its old connection end late
        assert b.fleet.states()["dev-1"].node == "node-b"
        b.fleet.flush(Flush("node-b", NOW + 3, released=("dev-1",)))
        state = a.fleet.states()["dev-1"]
        assert (state.node, state.seen_at) == ("", NOW + 3)
        b.fleet.flush(Flush("node-b", NOW + 4, held=("dev-2",)))
        a.fleet.leave("node-b", NOW + 5)  # a node stops (or restarts under its name): its sessions end
        assert a.fleet.states()["dev-2"].node == ""
        assert set(a.fleet.nodes()) == {"node-a"}


def test_a_stored_report_this_version_no_longer_reads_is_left_out(store: Store) -> None:
    """A report stored by a bridge from before a bound was tightened (an age of 2^63 ms, which failed
    `devices ls --json` for the whole fleet) reads as no report, not as an error for every view."""
    fleet = store.fleet
    unreadable = dataclasses.replace(report(), last_error=ErrorLine(2**63 - 1, "c", "d"))
    fleet.flush(Flush("node-a", NOW, reports=(Received("dev-1", NOW - 2, report(pending=1), history=True),)))
    fleet.flush(Flush("node-a", NOW, reports=(Received("dev-1", NOW - 1, unreadable, history=True),)))
    fleet.flush(Flush("node-a", NOW, reports=(Received("dev-2", NOW - 1, report(pending=2), history=True),)))
    states = fleet.states()
    assert states["dev-1"].report is None and states["dev-1"].seen_at == NOW - 1
    assert states["dev-2"].report == report(pending=2)
    assert [h.report for h in fleet.history("dev-1", 10)] == [report(pending=1)]


def test_history_keeps_the_newest_reports_and_prune_ends_old_rows(store: Store) -> None:
    fleet = store.fleet
    for n in range(HISTORY_PER_DEVICE + 5):
        fleet.flush(Flush("node-a", NOW + n, reports=(Received("dev-1", NOW + n, report(pending=n), history=True),)))
    fleet.flush(Flush("node-a", NOW, reports=(Received("dev-1", NOW + 500, report(pending=1), history=False),)))
    kept = fleet.history("dev-1", 1000)
    assert len(kept) == HISTORY_PER_DEVICE
    assert kept[0].report.pending == HISTORY_PER_DEVICE + 4 and kept[-1].report.pending == 5
    assert fleet.states()["dev-1"].report == report(pending=1)  # the latest is kept whether in history or not
    fleet.ask("req-old", "dev-1", NOW)
    fleet.flush(Flush("node-a", NOW, sightings=(Sighting("dev-1", NOW, "192.0.2.7", "token_invalid"),)))
    assert fleet.prune(NOW + HISTORY_AGE_S - 1000) == 1  # the request, a day old
    assert fleet.prune(NOW + HISTORY_AGE_S + 200) == HISTORY_PER_DEVICE + 1  # the history and the address, a week old
    assert fleet.prune(NOW + 30 * 86_400) == 1  # the telemetry, past its eight days
    assert fleet.telemetry(NOW + 30 * 86_400) == {}


def test_telemetry_counts_refusals_addresses_and_volume_by_hour(store: Store) -> None:
    fleet = store.fleet
    hour = hour_of(NOW)
    week = {("dev-1", hour - 2 - n): 10 for n in range(168)}  # ten intents an hour for a week
    fleet.flush(Flush("node-a", NOW, volume={**week, ("dev-1", hour - 1): 3, ("dev-1", hour): 900}))
    sightings = [Sighting("dev-1", NOW + n, "192.0.2.7", "token_replayed") for n in range(6)]
    sightings += [Sighting("dev-1", NOW + 10, "198.51.100.1"), Sighting("dev-2", NOW - 2 * HOUR_S, "192.0.2.9")]
    fleet.flush(Flush("node-a", NOW + 20, sightings=tuple(sightings)))
    counts = fleet.telemetry(NOW + 30)
    one = counts["dev-1"]
    assert (one.auth_failures, one.connects) == (6, 1)
    assert one.addresses == ("192.0.2.7", "198.51.100.1")
    assert (one.recent_volume, one.baseline_volume) == (900, 1680)
    assert "dev-2" not in counts  # its connect was two hours ago: nothing recent to judge
    assert fleet.telemetry(NOW + 30, ["dev-2"]) == {}
    assert fleet.telemetry(NOW + 3 * HOUR_S) == {}  # the refusals, the addresses and the spike have aged out


async def test_a_diagnose_request_is_taken_by_one_node_and_answered_only_by_its_device(store_url: StoreUrl) -> None:
    diagnosis = Diagnosis("req-1", report(), (ErrorLine(1, "c", "d"),), (FailingKind("email.send", "smtp_550", 2),),
                          86_400_000, "bridge:8883", "tcp")  # fmt: skip
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        a.fleet.ask("req-1", "dev-1", NOW)
        a.fleet.ask("req-2", "dev-2", NOW - 120)
        assert [r.request_id for r in b.fleet.pending(NOW - 60)] == ["req-1"]
        assert not a.fleet.answer("req-1", "dev-1", diagnosis, NOW)  # not sent yet
        assert b.fleet.mark("req-1", RequestState.SENT, "node-b", "", NOW)
        assert not a.fleet.mark("req-1", RequestState.SENT, "node-a", "", NOW)  # taken once
        assert not a.fleet.mark("req-1", RequestState.UNANSWERABLE, "node-a", "", NOW)  # not node A's
        assert b.fleet.pending(NOW - 60) == []
        assert not b.fleet.answer("req-1", "dev-2", dataclasses.replace(diagnosis), NOW)  # another device's
        assert b.fleet.answer("req-1", "dev-1", diagnosis, NOW + 1)
        answered = a.fleet.request("req-1")
        assert answered is not None
        assert (answered.state, answered.node, answered.answered_at) == (RequestState.ANSWERED, "node-b", NOW + 1)
        assert answered.diagnosis == diagnosis
        assert a.fleet.mark("req-2", RequestState.UNANSWERABLE, "node-a", "older edge", NOW)
        refused = b.fleet.request("req-2")
        assert refused is not None and (refused.state, refused.detail) == (RequestState.UNANSWERABLE, "older edge")
        a.fleet.ask("req-3", "dev-3", NOW)  # taken, then it could not be sent: its node says so
        assert a.fleet.mark("req-3", RequestState.SENT, "node-a", "", NOW)
        assert a.fleet.mark("req-3", RequestState.UNANSWERABLE, "node-a", "older edge", NOW)
        assert not a.fleet.mark("req-3", RequestState.SENT, "node-a", "", NOW)  # ended
        assert a.fleet.request("nope") is None


async def test_two_nodes_flushing_the_same_devices_at_once_do_not_deadlock(store_url: StoreUrl) -> None:
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        devices = [f"dev-{n:03d}" for n in range(60)]

        def flush(args: tuple[Store, str, int]) -> None:
            node_store, node, round_ = args
            order = devices if round_ % 2 else list(reversed(devices))
            node_store.fleet.flush(
                Flush(
                    node,
                    NOW + round_,
                    sightings=tuple(Sighting(d, NOW + round_, "192.0.2.1", "token_expired") for d in order),
                    volume={(d, hour_of(NOW)): 10 for d in order},  # 160 in all: past VOLUME_FLOOR, so summed
                )
            )

        work = [(s, name, n) for n in range(8) for s, name in ((a, "node-a"), (b, "node-b"))]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(flush, work))
        counts = a.fleet.telemetry(NOW + 10)
        assert {d: (t.auth_failures, t.recent_volume) for d, t in counts.items()} == dict.fromkeys(devices, (16, 160))


async def test_on_sqlite_the_fleet_tables_never_hold_up_the_ledger(tmp_path: Path) -> None:
    """The desk writes every second while devices send; a second writer on ledger.db made the ledger's writer sleep
    in SQLite's busy handler (300-400 ms stalls). Here fleet.db's write lock is held while the ledger admits."""
    url = StoreUrl.parse(f"sqlite:///{tmp_path}")
    async with opened(url) as s:
        assert (tmp_path / FLEET_DB).exists()
        ledger_tables = sqlite3.connect(tmp_path / "ledger.db").execute("SELECT name FROM sqlite_master").fetchall()
        assert not [name for (name,) in ledger_tables if name.startswith("fleet_")]
        with contextlib.closing(sqlite3.connect(tmp_path / FLEET_DB, isolation_level=None)) as holder:
            holder.execute("BEGIN IMMEDIATE")  # the desk in the middle of a flush
            holder.execute("INSERT INTO fleet_nodes (node, heartbeat_at) VALUES ('other', 0)")
            device = DeviceRef("dev-1", "acme", "boiler-7")
            envelope = Envelope("i-1", "hvac-ui", "email.send", int(NOW * 1000), None, 1, {"to": "a@example.com"})
            # The busy timeout is 10 s: in one file the admission would still be waiting when this gives up.
            acks = await asyncio.wait_for(
                admit(s.ledger, device, [envelope], lambda _e: Decision(True, limits=Limits()), NOW), 5
            )
            assert [a.state for a in acks] == [AckState.ACCEPTED]
            holder.execute("ROLLBACK")
        s.fleet.flush(Flush(node="node-a", now=NOW))  # and the desk writes once the lock is free
        assert "node-a" in s.fleet.nodes()
