"""`edge-outbox --config FILE status` (the systemd health timer's check) judges the link with the file's
`max_offline`, as the running outbox's own /healthz does: it used its built-in 1 h, so a site given a
longer `max_offline` for its forward windows failed its health check every day while /healthz said ok,
and one given a shorter one was called healthy long after /healthz said not."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.edge import cli
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.offline_site import enrolled_site
from tests.support.sneakernet import cut_off


def edge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_outbox", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(180)
def test_status_takes_max_offline_from_the_config_file_as_run_does(tmp_path: Path) -> None:
    site = enrolled_site(tmp_path)
    cut_off(site)  # its bridge is nowhere: the link stays down
    metrics = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'data_dir = "{site}"\nlisten = "127.0.0.1:{free_port()}"\nmetrics = "127.0.0.1:{metrics}"\n'
        'max_offline = "1s"\n'
    )
    log = (tmp_path / "outbox.log").open("wb")
    outbox = subprocess.Popen(
        [sys.executable, "-m", "edge_outbox", "--config", str(config), "run"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(metrics)
        wait_until(lambda: healthz(metrics) == 503, what="/healthz unhealthy past the file's max_offline")

        checked = edge(config, "status", "--json")
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert any("bridge" in problem for problem in json.loads(checked.stdout)["problems"]), checked.stdout
        flag_wins = edge(config, "status", "--max-offline", "1h")
        assert flag_wins.returncode == 0, flag_wins.stdout + flag_wins.stderr
    finally:
        outbox.terminate()
        outbox.wait(15)
        log.close()


@pytest.mark.timeout(180)
def test_status_without_max_offline_judges_as_the_running_outbox_does(tmp_path: Path) -> None:
    """The image's HEALTHCHECK is a bare `edge-outbox status`: with `run --max-offline 1s` on the compose
    command line, /healthz said unhealthy and the container's health check said healthy for an hour."""
    site = enrolled_site(tmp_path)
    cut_off(site)
    metrics = free_port()
    log = (tmp_path / "outbox.log").open("wb")
    outbox = subprocess.Popen(
        [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(site), "--listen", f"127.0.0.1:{free_port()}",
         "--metrics", f"127.0.0.1:{metrics}", "--max-offline", "1s"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(metrics)
        wait_until(lambda: healthz(metrics) == 503, what="/healthz unhealthy past run's --max-offline")

        checked = cli(site, "status")
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert "no link to the bridge" in checked.stdout
        assert cli(site, "status", "--max-offline", "1h").returncode == 0  # one given to status wins
    finally:
        outbox.terminate()
        outbox.wait(15)
        log.close()
