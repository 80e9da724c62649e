"""The README's "Trying the parts by hand" block, run as pasted: one bash, an empty folder, the
project's programs on the PATH. Only the ports line is changed, to free ports. It must end with
the email at the SMTP server and every process it started gone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
PORTS_LINE = re.compile(r"^MQTT_PORT=\d+ HTTPS_PORT=\d+ EDGE_PORT=\d+ SMTP_PORT=\d+$", re.MULTILINE)


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Trying the parts by hand") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return block.group(1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_readme_walkthrough_delivers_the_email(tmp_path: Path) -> None:
    require_binary("mosquitto_pub")
    script, replaced = PORTS_LINE.subn(
        f"MQTT_PORT={free_port()} HTTPS_PORT={free_port()} EDGE_PORT={free_port()} SMTP_PORT={free_port()}",
        walkthrough(),
    )
    assert replaced == 1, "the block starts by naming its ports in one line"
    folder = tmp_path / "walkthrough"
    folder.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the servers it starts stay in its process group, to be found afterwards
    )
    try:
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the walkthrough did not finish within 120 s (a wait that never ended):" + logs(folder))
        assert proc.returncode == 0, output + logs(folder)
        # The block's `kill` sent SIGTERM: the servers stop by themselves, cleanly.
        deadline = time.monotonic() + 30
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(proc.pid), (
            "still running: "
            + subprocess.run(
                ["ps", "-o", "pid,etime,cmd", "-g", str(proc.pid)], capture_output=True, text=True, check=False
            ).stdout
            + logs(folder)
        )
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    mail = (folder / "mail.log").read_text()
    assert "From: alerts@acme.example" in mail and "To: ops@example.com" in mail and "Subject: Alarm" in mail
    assert "Boiler 3 hot" in mail
    assert "Subject: Alarm" in output  # `cat mail.log` showed it to the reader
    assert (folder / "cloud-bridge-data/registry.db").exists() and (folder / "outbox-data/identity").is_dir()


def logs(folder: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("*.log")))
