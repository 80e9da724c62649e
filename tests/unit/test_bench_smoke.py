"""Smoke tests for the benchmark's parts (report writer, MQTT packet encoding, backlog growth, CPU readings,
the peers' Mosquitto settings against a real Mosquitto).

No benchmark runs here: these take a few seconds in all.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import mqttraw, report
from bench.p3_memory import grow
from bench.procs import CpuWatch, Proc, cpu_seconds, free_port, rss_mb, thread_names
from bench.report import Figure, Survival, fmt_num, ratio, render, survival_table, table, tenths_table
from bench.stack import intent_body
from edge_outbox import db
from tests.support.net import wait_until
from tests.support.services import require_binary


def test_table_shows_median_range_and_ratio_to_each_peer() -> None:
    ours = Figure("P1", "ours", "msgs/s", [900.0, 1000.0, 1100.0], peers=["theirs", "missing"], target=">= 0.9x")
    theirs = Figure("P1", "theirs", "msgs/s", [400.0, 500.0, 2000.0])
    text = table([ours, theirs])
    row = next(line for line in text.splitlines() if line.startswith("| ours"))
    assert "| 1,000 msgs/s | 900 - 1,100 | 3 |" in row
    assert "2.00x theirs" in row
    assert "- missing" in row
    assert ">= 0.9x" in row


def test_ratio_is_none_without_peer_samples() -> None:
    ours = Figure("P2", "ours", "x", [1.0], peers=["empty"])
    assert ratio(ours, "empty", [ours, Figure("P2", "empty", "x")]) is None


def test_unmeasured_figure_is_reported_as_such() -> None:
    assert "not measured" in table([Figure("P4", "rate", "intents/s")])


def test_number_format() -> None:
    assert [fmt_num(v) for v in (12345.6, 123.4, 12.34, 1.234, float("nan"))] == ["12,346", "123", "12.3", "1.23", "-"]


def test_render_has_machine_command_sections_and_findings() -> None:
    figs = [Figure("P5", "p99", "ms", [80.0, 90.0, 120.0], target="<= 100 ms")]
    text = render(
        figs,
        sections={"P5": "latency", "P1": "ingest"},
        machine_info={"nproc": "2"},
        command="bench/run",
        started="today",
        duration_s=60,
        extra={"Mosquitto": "2.0"},
        findings="F1: something",
    )
    assert "- nproc: 2" in text
    assert "Reproduce: `bench/run`" in text
    assert "## P5: latency" in text
    assert "## P1" not in text  # sections without figures are left out
    assert text.rstrip().endswith("F1: something")
    with_scale = render(figs, sections={"P5": "latency"}, machine_info={}, command="x", started="t", duration_s=1,
                        extra={}, findings="F1", scale="| pg x1 | 5,000 |")  # fmt: skip
    assert with_scale.index("## Scale-out") < with_scale.index("## Findings")
    assert "| pg x1 | 5,000 |" in with_scale


def test_scale_table_reports_rates_cpu_and_commits_per_intent() -> None:
    from bench.scale import Sample
    from bench.scale import table as scale_table

    results = {
        "sqlite x1": [Sample(1000, 5000.0, 900.0, [2.0], [1.0], 0.0, 50.0, float("nan"))],
        "pg x2": [Sample(1000, 4000.0, 800.0, [1.5, 1.0], [1.0], 0.5, 40.0, 120.0)],
    }
    text = "\n".join(scale_table("P2", results, True))
    row = next(line for line in text.splitlines() if line.startswith("| pg x2"))
    assert "| 0.80x |" in row
    assert "| 2.50 (1.25) |" in row  # 2.5 s of node CPU over 1,000 intents, 1.25 ms each node
    assert row.rstrip().endswith("| 0.50 | 0.040 | 0.120 |")


def test_figure_json_round_trip() -> None:
    fig = Figure("P3", "rss", "MB", [1.0, 2.0], peers=["x"], target="<= 100 MB", note="n", higher_is_better=False)
    fig.add_cpu({"edge": 0.5}, 1000)
    fig.tenths.append([3.0, 2.0])
    assert Figure.from_json(fig.to_json()) == fig
    survival = Survival("edge outbox", [500], [500])
    assert Survival.from_json(survival.to_json()) == survival


def test_cpu_column_shows_each_process_per_intent_and_their_sum() -> None:
    ours = Figure("P1", "ours", "msgs/s", [1000.0, 1200.0])
    ours.add_cpu({"edge": 0.3, "bridge": 0.4}, 1000)  # 300 and 400 us per intent
    ours.add_cpu({"edge": 0.5, "bridge": 0.6}, 1000)
    alone = Figure("P1", "alone", "msgs/s", [2000.0])
    text = table([ours, alone, Figure("P1", "unmeasured", "msgs/s", [5.0])])
    header, _rule, row, row_alone, row_none = text.splitlines()
    assert header.split(" | ")[3] == "CPU per intent, us"
    assert row.split(" | ")[3] == "edge 400 + bridge 500 = 900"  # medians of each process, then the sum
    assert row_alone.split(" | ")[3] == "-"
    assert row_none.split(" | ")[3] == "-"
    assert "CPU per intent" not in table([alone])  # no column where nothing was measured


def test_cpu_per_intent_divides_by_the_intents_counted() -> None:
    fig = Figure("P6", "x", "msgs/s")
    fig.add_cpu({"edge": 2.0}, 4000)
    fig.add_cpu({"edge": 1.0}, 0)  # nothing counted: no sample (not a CPU time per nothing)
    assert fig.cpu_us == {"edge": [500.0]}


def test_tenths_table_has_the_median_per_tenth_and_marks_tenths_not_reached() -> None:
    full = Figure("P6", "outbox", "msgs/s", [3000.0], tenths=[[float(10 - i) * 100 for i in range(10)]] * 3)
    capped = Figure("P6", "durable", "msgs/s", [400.0], tenths=[[900.0, 500.0, 300.0], [700.0, 400.0], [800.0]])
    text = tenths_table([full, capped, Figure("P6", "no tenths", "msgs/s", [1.0])])
    header, _rule, row_full, row_capped = text.splitlines()
    assert header.startswith("| figure | to 10% | to 20% |") and header.endswith("| to 100% |")
    assert row_full == "| outbox (msgs/s) | 1,000 | 900 | 800 | 700 | 600 | 500 | 400 | 300 | 200 | 100 |"
    assert row_capped == "| durable (msgs/s) | 800 | 450 | 300 | - | - | - | - | - | - | - |"
    assert tenths_table([Figure("P1", "rate", "msgs/s", [1.0])]) == ""


def test_survival_table_counts_acked_arrived_and_lost_per_run() -> None:
    text = survival_table(
        [
            Survival("edge outbox", [500, 500], [500, 500]),
            Survival("Mosquitto, default persistence", [500, 502], [0, 0]),
            Survival("Mosquitto, autosave on every change", [500, 500], [499, 500]),
            Survival("not run"),
        ]
    )
    rows = text.splitlines()[2:]
    assert rows[0] == "| edge outbox | 500 / 500 | 500 / 500 | 0 / 0 | 0 of 1,000 (none) |"
    assert rows[1] == "| Mosquitto, default persistence | 500 / 502 | 0 / 0 | 500 / 502 | 1,002 of 1,002 (all) |"
    assert rows[2] == "| Mosquitto, autosave on every change | 500 / 500 | 499 / 500 | 1 / 0 | 1 of 1,000 (0.1%) |"
    assert rows[3] == "| not run | - | - | - | - |"


def test_render_places_tenths_under_their_section_and_the_durability_table_after_the_sections() -> None:
    figs = [
        Figure("P1", "ingest", "msgs/s", [1.0]),
        Figure("P6", "outbox", "msgs/s", [3000.0], tenths=[[3000.0] * 10]),
    ]
    text = render(figs, sections={"P1": "ingest", "P6": "offline"}, machine_info={}, command="x", started="t",
                  duration_s=1, extra={}, findings="F1", scale="| pg |",
                  survivals=[Survival("edge outbox", [10], [10])])  # fmt: skip
    assert text.index("## P1") < text.index("## P6") < text.index("to 10%") < text.index("## Durability")
    assert text.index("## Durability") < text.index("| edge outbox | 10 | 10 | 0 |") < text.index("## Scale-out")
    assert "to 10%" not in render(figs[:1], sections={"P1": "ingest"}, machine_info={}, command="x", started="t",
                                  duration_s=1, extra={}, findings="F1")  # fmt: skip
    assert "## Durability" not in render(figs, sections={"P6": "offline"}, machine_info={}, command="x",
                                         started="t", duration_s=1, extra={}, findings="F1")  # fmt: skip


def test_proc_tail_shows_only_what_this_process_wrote_to_a_log_shared_by_name(tmp_path: Path) -> None:
    first = Proc("edge", [sys.executable, "-c", "print('bridge link connected')"], tmp_path)
    first.popen.wait(60)
    second = Proc("edge", [sys.executable, "-c", "print('starting')"], tmp_path)
    second.popen.wait(60)
    assert "bridge link connected" in first.tail()
    assert second.tail().strip() == "starting"


def test_cpu_watch_reads_the_time_a_process_spent_on_the_cpu() -> None:
    watch = CpuWatch(me=os.getpid())
    before = cpu_seconds(os.getpid())
    while cpu_seconds(os.getpid()) - before < 0.05:  # burn CPU until the kernel has counted some
        sum(range(10_000))
    assert watch.used()["me"] >= 0.05


def test_cpu_watch_reads_each_threads_time_and_py_spy_names_the_threads() -> None:
    watch = CpuWatch(threads=True, me=os.getpid())
    done = threading.Event()
    ready: list[int] = []

    def burn() -> None:
        ready.append(threading.get_native_id())
        start = time.thread_time()
        while time.thread_time() - start < 0.1:
            sum(range(10_000))
        done.wait(60)  # alive while it is named

    burner = threading.Thread(target=burn, name="bench-burner")
    burner.start()
    try:

        def burned() -> bool:
            watch.used()
            return bool(ready) and watch.readings[-1]["me"].get(ready[0], 0.0) >= 0.05

        wait_until(burned, what="the burning thread's CPU time, read per thread")
        assert thread_names(os.getpid())[ready[0]] == "bench-burner"
    finally:
        done.set()
        burner.join(10)


def test_mqtt_remaining_length_and_publish_packet() -> None:
    assert mqttraw.remaining_length(0) == b"\x00"
    assert mqttraw.remaining_length(127) == b"\x7f"
    assert mqttraw.remaining_length(128) == b"\x80\x01"
    assert mqttraw.remaining_length(16_383) == b"\xff\x7f"
    packet = mqttraw.publish_packet("a/b", b"hi", 1, pid=7)
    assert packet == bytes([0x32, 9]) + b"\x00\x03a/b" + b"\x00\x07" + b"hi"
    assert mqttraw.publish_packet("t", b"", 0) == bytes([0x30, 3]) + b"\x00\x01t"


def test_grow_copies_accepted_rows_with_new_ids_and_marks_their_events_published(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    for n in range(3):
        conn.execute(
            "INSERT INTO intents (id, app, kind, state, created, updated, payload, size)"
            " VALUES (?, 'app', 'http.request', 'accepted', 1, 1, x'7b7d', 2)",
            (f"ID{n}",),
        )
    conn.close()
    grow(tmp_path / db.DB_NAME, 8)
    check = sqlite3.connect(tmp_path / db.DB_NAME)
    ids = [r[0] for r in check.execute("SELECT id FROM intents ORDER BY seq")]
    assert len(ids) == len(set(ids)) == 8
    assert dict(check.execute("SELECT state, items FROM stats")) == {"accepted": 8}
    published = check.execute("SELECT value FROM meta WHERE key = 'status_published_seq'").fetchone()[0]
    assert int(published) == check.execute("SELECT max(seq) FROM events").fetchone()[0]
    check.close()


def test_io_stall_time_is_read_from_the_kernel_and_only_grows() -> None:
    first = report.io_stall_us()
    if first is None:
        pytest.skip("this kernel has no pressure stall information (/proc/pressure/io)")
    second = report.io_stall_us()
    assert isinstance(first, int) and second is not None and second >= first >= 0


def test_rss_is_read_in_megabytes_as_p3_labels_it() -> None:
    """P3's figures and target say MB: 10^6 bytes (the kernel's "kB" are KiB); KiB / 1024 gave MiB, 4.9% less."""
    ballast = bytearray(50_000_000)  # the peak now holds at least these 50 MB
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    rss, peak = rss_mb(os.getpid())
    assert peak == pytest.approx(hwm_kib * 1024 / 1_000_000, rel=0.01)  # MiB would be 4.9% off
    assert 0 < rss <= peak
    del ballast


def test_p4_connect_rate_counts_from_the_first_connect_to_the_last_suback_not_from_the_load_processes_start() -> None:
    from bench.p4_fanin import connect_rate

    # Two load processes: Python and their imports took their first 0.3 s, then each connected its half.
    outs = [
        {"connect_start": 100.3, "connected": 102.3},
        {"connect_start": 100.4, "connected": 102.8},
    ]
    assert connect_rate(1000, outs) == pytest.approx(1000 / 2.5)


def test_p99_is_the_nearest_rank_value_not_the_next_one_up() -> None:
    from bench.p4_fanin import percentile

    latencies = [float(ms) for ms in range(100, 0, -1)]  # 1 .. 100 ms, unordered
    assert percentile(latencies, 0.99) == 99.0  # 99 of the 100 are at or under it; it was the maximum, 100
    assert percentile(latencies, 0.5) == 50.0
    assert percentile([float(n) for n in range(1, 2001)], 0.99) == 1980.0  # P5's 2,000 intents
    assert percentile([7.0], 0.99) == 7.0


async def _lagging_session_gets(port: int, sent: int) -> set[int]:
    """What a persistent session on the broker at `port` receives of `sent` messages published while it is
    away (as a bridge's or a slow subscriber's queue holds them), counted once it is back."""
    from bench.mqttraw import MqttClient

    sub = await MqttClient.connect("127.0.0.1", port, "counter", clean=False)
    await sub.subscribe("outbox/#", 1)
    await sub.close()  # away while the messages come: all of them wait in its session
    pub = await MqttClient.connect("127.0.0.1", port, "bridge")
    await asyncio.gather(*(pub.publish("outbox/app/http.request", intent_body(n)) for n in range(sent)))
    received: set[int] = set()
    marker = asyncio.Event()

    def on_message(topic: str, payload: bytes) -> None:
        if topic == "outbox/marker":
            marker.set()
        else:
            received.add(json.loads(payload)["json"]["n"])

    sub = await MqttClient.connect("127.0.0.1", port, "counter", clean=False)
    sub.on_message = on_message
    await pub.publish("outbox/marker", b"")  # after every queued message in the session's order
    await asyncio.wait_for(marker.wait(), 60)
    await asyncio.gather(sub.close(), pub.close())
    return received


def test_the_durability_tables_cloud_mosquitto_keeps_all_a_bridge_brings_while_its_subscriber_lags(
    tmp_path: Path,
) -> None:
    """The cloud broker only counts what arrived: a queue limit there (Mosquitto's default 1,000 per session)
    dropped what the restarted edge's bridge brought faster than the subscriber took, and that loss was
    charged to the edge Mosquitto's persistence."""
    from bench.durability import start_collector

    port = free_port()
    collector = start_collector(require_binary("mosquitto"), "cloud", tmp_path, port)
    try:
        assert len(asyncio.run(_lagging_session_gets(port, 1500))) == 1500
    finally:
        collector.stop()


def test_p1_mosquitto_pair_queues_all_it_acknowledged_for_a_bridge_that_lags(tmp_path: Path) -> None:
    """P1 counts the PUBACKs of a Mosquitto bridge pair: with Mosquitto's default queue (1,000 per session) the
    edge Mosquitto acknowledged what its bridge could not take yet and then dropped it (with autosave on every
    change and 4 publishers, 6,176 of 9,706), so the figure counted messages that never reached the cloud."""
    from bench.p1_ingest import start_pair_broker

    port = free_port()
    broker = start_pair_broker(require_binary("mosquitto"), "mosq-edge-default", tmp_path, port, "default")
    try:
        assert len(asyncio.run(_lagging_session_gets(port, 1500))) == 1500
    finally:
        broker.stop()


def test_wait_linked_returns_once_the_outbox_logs_its_link_and_raises_when_it_exits_without(tmp_path: Path) -> None:
    """P1's "edge outbox + live bridge" measured from the listening port, before the link was up (its first
    part ran as store only), and P5 went on after 30 s without a link: both now wait for it, or fail."""
    from bench.stack import wait_linked

    linked = Proc("edge", [sys.executable, "-c", "print('starting'); print('bridge link connected')"], tmp_path)
    wait_linked(linked)
    linked.popen.wait(60)
    alone = Proc("edge-alone", [sys.executable, "-c", "print('not enrolled: storing only')"], tmp_path)
    with pytest.raises(RuntimeError, match="no link to the bridge") as raised:
        wait_linked(alone)
    assert "not enrolled: storing only" in str(raised.value)  # its log, to see why
