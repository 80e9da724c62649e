"""Smoke tests for the benchmark's pure parts (report writer, MQTT packet encoding, backlog growth).

No benchmark runs here: these take well under a second.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench import mqttraw
from bench.p3_memory import grow
from bench.report import Figure, fmt_num, ratio, render, table
from edge_outbox import db


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


def test_figure_json_round_trip() -> None:
    fig = Figure("P3", "rss", "MB", [1.0, 2.0], peers=["x"], target="<= 100 MB", note="n", higher_is_better=False)
    assert Figure.from_json(fig.to_json()) == fig


def test_mqtt_remaining_length_and_publish_packet() -> None:
    assert mqttraw._varint(0) == b"\x00"
    assert mqttraw._varint(127) == b"\x7f"
    assert mqttraw._varint(128) == b"\x80\x01"
    assert mqttraw._varint(16_383) == b"\xff\x7f"
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
