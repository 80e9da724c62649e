"""The outbox's optional /metrics and /healthz: real Prometheus text, named by Prometheus conventions."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.edge import Client, OutboxProcess, email
from tests.support.metrics import check_conventions
from tests.support.net import free_port, wait_until


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_of_a_live_outbox(tmp_path: Path) -> None:
    metrics_port = free_port()
    with OutboxProcess(tmp_path / "data", free_port(), "--metrics", f"127.0.0.1:{metrics_port}") as outbox:
        app = Client(outbox.port, "app").connect()
        for n in range(3):
            app.publish("outbox/app/email.send", email(f"m{n}"), name=f"m{n}")
        app.publish("outbox/app/fax.send", {"id": "bad"}, name="bad")
        wait_until(lambda: len(app.acked) == 4, what="PUBACKs")
        status, text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        check_conventions(families.values(), prefix="edge_outbox_")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("edge_outbox_intents", (("state", "accepted"),))] == 3
        assert samples[("edge_outbox_intake_total", (("outcome", "accepted"),))] == 3
        assert samples[("edge_outbox_intake_total", (("outcome", "rejected"),))] == 1
        assert samples[("edge_outbox_apps_connected", ())] == 1
        assert samples[("edge_outbox_oldest_pending_age_seconds", ())] >= 0
        assert samples[("edge_outbox_commit_duration_seconds_count", ())] >= 1
        status, body = fetch(f"http://127.0.0.1:{metrics_port}/healthz")
        assert (status, body) == (200, '{"status": "ok", "problems": []}')
        app.close()


def test_the_endpoint_refuses_anything_but_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(tmp_path / "d"),
         "--listen", f"127.0.0.1:{free_port()}", "--metrics", f"0.0.0.0:{free_port()}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no authentication; give a loopback address" in result.stderr
    assert "Traceback" not in result.stderr
