"""`edge-outbox --config FILE status` (the systemd health timer's check) judges the link with the file's
`max_offline`, as the running outbox's own /healthz does: it used its built-in 1 h, so a site given a
longer `max_offline` for its forward windows failed its health check every day while /healthz said ok,
and one given a shorter one was called healthy long after /healthz said not."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_outbox import lock
from edge_outbox.cli import main
from tests.support.edge import OutboxProcess, cli
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.offline_site import backlog, enrolled_site
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
        # status reads the link as the outbox records it at its housekeeping ticks (which may come after /healthz
        # turned): it must turn too (in an hour, the default, before the fix).
        wait_until(lambda: edge(config, "status").returncode == 1, what="status unhealthy past the file's max_offline")

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
        # As above: status must turn too, once the outbox recorded the link.
        wait_until(lambda: cli(site, "status").returncode == 1, what="status unhealthy past run's --max-offline")

        checked = cli(site, "status")
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert "no link to the bridge" in checked.stdout
        assert cli(site, "status", "--max-offline", "1h").returncode == 0  # one given to status wins
    finally:
        outbox.terminate()
        outbox.wait(15)
        log.close()


@pytest.mark.timeout(120)
def test_status_says_unhealthy_when_the_running_outbox_has_not_beaten_for_a_minute(tmp_path: Path) -> None:
    """An outbox whose event loop hung (here: stopped) keeps its lock, and status trusted the last record it wrote,
    exit 0, however long ago. Status a minute and a half later (faketime) sees its heartbeat stale."""
    metrics = free_port()
    outbox = OutboxProcess(tmp_path / "edge", free_port(), "--metrics", f"127.0.0.1:{metrics}").start()
    later = ["faketime", "-f", "+90s", sys.executable, "-m", "edge_outbox", "status", "--json"]
    try:
        wait_for_port(metrics)
        assert cli(outbox.data_dir, "status").returncode == 0
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGSTOP)  # a hung event loop
        stale = subprocess.run(
            [*later, "--data-dir", str(outbox.data_dir)], capture_output=True, text=True, timeout=60, check=False
        )
        assert stale.returncode == 1, stale.stdout + stale.stderr
        [problem] = json.loads(stale.stdout)["problems"]
        assert problem.startswith("no heartbeat from the outbox for 9")
        assert "(more than 60 s): its event loop or its housekeeping is stuck" in problem
        outbox.proc.send_signal(signal.SIGCONT)
        assert cli(outbox.data_dir, "status").returncode == 0
    finally:
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGCONT)
        outbox.stop()


@pytest.mark.timeout(180)
def test_a_flush_holding_the_lock_is_not_judged_by_the_heartbeat(tmp_path: Path) -> None:
    """`flush` with no outbox running holds the outbox's lock and records no heartbeat (it runs no housekeeping):
    a health check during a flush of a few minutes must not call it stuck."""
    site = enrolled_site(tmp_path)
    cut_off(site)
    backlog(site, 1)
    flushing = subprocess.Popen(
        [sys.executable, "-m", "edge_outbox", "flush", "--timeout", "5m", "--data-dir", str(site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: lock.running(site), what="the flush holding the lock")
        later = subprocess.run(
            ["faketime", "-f", "+90s", sys.executable, "-m", "edge_outbox", "status", "--json", f"--data-dir={site}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert later.returncode == 0, later.stdout + later.stderr
        assert json.loads(later.stdout)["running"]["where"] == "edge-outbox flush"
    finally:
        flushing.terminate()
        flushing.wait(30)


def test_status_help_gives_the_default_it_judges_by() -> None:
    """`status --help` said `[default: 1h]` while status, given none, judges by the running outbox's own
    --max-offline (docs/operations.md); only with no outbox running is it 1 h."""
    status_help = " ".join(CliRunner().invoke(main, ["status", "--help"]).output.split())
    assert "[default: 1h]" not in status_help
    assert "[default: (the running outbox's --max-offline; with none running, 1h)]" in status_help
    run_help = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert "unhealthy. [default: 1h]" in run_help
