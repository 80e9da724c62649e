"""An --attach URL refused at start never shows a password written into it: the outbox stops in one line that
says what is wrong with the URL (given as a flag or in the config file), with the password as ***."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PASSWORD = f"S3CR3T-{os.urandom(6).hex()}"


def run(tmp_path: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    first = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        [sys.executable, "-m", "edge_outbox", *first, "run", "--data-dir", str(tmp_path / "data"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        # Paho's clients take tcp:// and ssl://: the refusal quoted the URL whole, password and all.
        (f"tcp://site:{PASSWORD}@broker.lan:1883", "'tcp://site:***@broker.lan:1883': expected mqtt://HOST:PORT"),
        (f"mqtt:/site:{PASSWORD}@broker.lan", "'mqtt:/site:***@broker.lan': expected mqtt://HOST:PORT"),
        # urlsplit refused the host with a ValueError quoting it: a traceback with the password in its last line.
        (f"mqtt://site:{PASSWORD}@broker\u2100:1883", "'mqtt://site:***@broker\u2100:1883': not a URL"),
    ],
)
def test_a_refused_attach_url_never_shows_its_password(tmp_path: Path, url: str, said: str) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'attach = "{url}"\n', encoding="utf-8")
    for done in (run(tmp_path, f"--attach={url}"), run(tmp_path, config=config)):
        assert done.returncode != 0
        assert said in done.stderr, done.stderr
        assert "put the password in EDGE_OUTBOX_ATTACH_PASSWORD, not in the URL" in done.stderr
        assert PASSWORD not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
