"""A running `cloud-bridge run`'s labelled counters, as Prometheus scrapes them: every value the docs list is
exported at 0 from the start, so that `increase()` and `rate()` see the first event (a series that first
appears at 1 is no increase to Prometheus: an alert on the first refused reload never fired)."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.net import free_port
from tests.support.stack import BridgeProcess, bridge_cli

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"
# The counters whose label values the docs list in full (each row's backticked words after the name).
LISTED = ("bridge_enrollments_total", "bridge_batches_total", "bridge_config_reloads_total",
          "bridge_topics_refused_total", "bridge_device_reports_total", "bridge_connections_shed_total")  # fmt: skip


def documented(name: str) -> set[str]:
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith(f"| `{name}{{"))
    meaning = row.split("|")[3].split(": see")[0]
    return set(re.findall(r"`([a-z_]+)`", meaning))


def scrape(bridge: BridgeProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{bridge.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_labelled_counters_start_at_zero_and_count_the_first(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    bridge = BridgeProcess(tmp_path, server_cert_files, free_port()).start()
    try:
        start = scrape(bridge)
        for name in LISTED:
            values = {v for labels in start.get(name, {}) for k, v in labels if k != "listener"}
            assert documented(name) <= values, f"{name} at start: {sorted(values)}, documented {documented(name)}"
            assert all(value == 0 for value in start[name].values()), (name, start[name])
        listeners = {dict(labels)["listener"] for labels in start["bridge_connections_shed_total"]}
        assert {"mqtt", "https", "metrics"} <= listeners
        states = {dict(labels)["state"] for labels in start["bridge_acks_total"]}
        assert {"accepted", "delivered", "failed", "expired", "rejected"} <= states

        bridge.config.write_text("[bridge]\nretry_base = 'soon'\n")  # refused: every reload of it
        reload = subprocess.run([*bridge_cli(), "reload", "--data-dir", str(bridge.data_dir)],
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert reload.returncode == 1, reload.stderr
        after = scrape(bridge)["bridge_config_reloads_total"]
        assert after[(("result", "refused"),)] == 1
        assert after[(("result", "applied"),)] == 0
    finally:
        bridge.stop()
