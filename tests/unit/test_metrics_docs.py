"""docs/operations.md's tables of metrics name every family each program exposes, and no other: the names, the
types and, where the family has samples, the labels. The edge's are read from its probe serving on loopback,
the bridge's from a node's registry (its fleet desk's families included)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.fleet_sql import sqlite_fleet
from cloud_bridge.metrics import BridgeMetrics
from edge_outbox.ops import Summary
from edge_outbox.probe import Observed, Probe
from tests.support.net import free_port

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)(?:\{(?P<labels>[a-z_, ]+)\})?` \| (?P<type>[a-z]+) \|", re.MULTILINE)


class Row(NamedTuple):
    type: str
    labels: frozenset[str]


def documented(prefix: str) -> dict[str, Row]:
    """The table rows of `prefix`'s metrics, by the name a scrape shows (a counter's with `_total`)."""
    rows = {}
    for match in _ROW.finditer(OPERATIONS.read_text()):
        if match["name"].startswith(prefix):
            labels = frozenset(label.strip() for label in (match["labels"] or "").split(",") if label.strip())
            rows[match["name"]] = Row(match["type"], labels)
    return rows


def exposed(text: str, prefix: str) -> dict[str, Row]:
    """What a scrape's text holds of `prefix`'s families, named as documented."""
    found = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(prefix) or family.name.endswith("_created"):
            continue  # prometheus_client writes when each series began as a gauge of its own
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        found[name] = Row(family.type, frozenset(labels))
    return found


def check(docs: dict[str, Row], code: dict[str, Row]) -> None:
    assert sorted(set(code) - set(docs)) == [], "exposed but not in docs/operations.md"
    assert sorted(set(docs) - set(code)) == [], "in docs/operations.md but not exposed"
    for name, row in code.items():
        assert docs[name].type == row.type, name
        if row.labels:  # a labelled family without samples shows no labels
            assert docs[name].labels == row.labels, name


async def test_the_edge_metrics_table_is_what_the_probe_serves() -> None:
    async def observe() -> Observed:
        summary = Summary({"accepted": 1}, {"accepted": 10}, 1, 10, 1_000)
        return Observed(summary, 2_000, "connected", 1_000, 1, 1, {"accepted": 1}, 0, 0, None, "", 1)

    port = free_port()
    probe = Probe("127.0.0.1", port, observe, 3600.0)
    probe.commit_seconds.observe(0.01)
    await probe.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    finally:
        await probe.stop()
    check(documented("edge_outbox_"), exposed(text, "edge_outbox_"))


def test_the_bridge_metrics_table_is_what_a_node_exposes(tmp_path: Path) -> None:
    metrics = BridgeMetrics()
    metrics.count_commits(lambda: 0)
    fleet = sqlite_fleet(tmp_path / "fleet.db")
    try:
        FleetDesk(fleet, node="n1", devices=list, metrics=metrics.registry)
    finally:
        fleet.close()
    text = generate_latest(metrics.registry).decode()
    check(documented("bridge_"), exposed(text, "bridge_"))
