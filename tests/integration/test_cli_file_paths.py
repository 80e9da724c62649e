"""The files both CLIs write, named as a script names them: `--out "$BUNDLE"` with the variable unset.

Real processes on real data dirs (an offline-enrolled site and its bridge, tests.support.offline_site).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_bridge.ledger_states import EntryState
from tests.support.offline_site import backlog, bridge, email_policy, enrolled_site, executed, ticket
from tests.support.sneakernet import edge_cli


def _usage_error(done: object, flag: str) -> None:
    returncode, stderr = done.returncode, done.stderr  # type: ignore[attr-defined]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == f"Error: Invalid value for '{flag}': an empty path names no file", stderr


@pytest.mark.timeout(180)
def test_an_empty_path_for_a_file_to_write_is_refused_before_anything_is_done(tmp_path: Path) -> None:
    """Each was a `ValueError: PosixPath('.') has an empty name` traceback from the atomic write, after the work:
    `export` had read every pending intent, `cloud-bridge import --receipt ""` had admitted the whole bundle (docs
    say a receipt that cannot be written is one line naming what was admitted)."""
    site = enrolled_site(tmp_path)
    backlog(site, 3)
    config = email_policy(tmp_path)
    device_id = json.loads((site / "identity" / "device.json").read_text())["device_id"]
    bundle = tmp_path / "site.bundle"
    assert edge_cli(site, "export", "--out", str(bundle)).returncode == 0, "a bundle to import"
    bridge_dir = tmp_path / "bridge"

    _usage_error(edge_cli(site, "export", "--out", ""), "--out")
    _usage_error(edge_cli(tmp_path / "new-site", "enroll-request", "--ticket", str(ticket(tmp_path, "n")), "--out", ""),
                 "--out")  # fmt: skip
    _usage_error(bridge(bridge_dir, "import", str(bundle), "--config", str(config), "--receipt", ""), "--receipt")
    _usage_error(bridge(bridge_dir, "receipt", device_id, "--out", ""), "--out")
    _usage_error(bridge(bridge_dir, "devices", "enroll-ticket", "--tenant", "e2e", "--name", "x", "--out", ""), "--out")
    _usage_error(bridge(bridge_dir, "devices", "enroll-offline", str(tmp_path / "s.request"), "--out", ""), "--out")

    assert executed(bridge_dir, EntryState.DELIVERED) == 0  # the bundle was not admitted
    assert not (tmp_path / "new-site" / "identity").exists()  # no key made for a request never written


def test_an_empty_directory_for_dev_certs_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """`cloud-bridge dev-certs "$DIR"` with the variable unset wrote a CA key and a server key into the current
    directory (the CLI helper found a checkout with them in it)."""
    done = subprocess.run(
        [sys.executable, "-m", "cloud_bridge", "dev-certs", ""],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip().splitlines()[-1] == "Error: Invalid value for 'DIRECTORY': an empty path names no directory"
    )
    assert list(tmp_path.iterdir()) == []
