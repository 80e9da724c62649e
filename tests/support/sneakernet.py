"""The offline paths as a technician runs them: the two CLIs in real processes, files between them.

Nothing here opens a connection between edge and bridge: a site that is never online is an edge
whose identity points at a port nobody listens on, and everything it sends or learns goes through
files written by `edge-outbox export` and `cloud-bridge import` / `receipt`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.stack import TENANT, Stack, bridge_cli


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def edge_cli(edge_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(edge_args(edge_dir, *args))


def bridge_cmd(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*bridge_cli(), *args, "--data-dir", str(stack.bridge.data_dir)])


def cut_off(edge_dir: Path) -> None:
    """Make the enrolled edge a site with no link: its bridge addresses lead nowhere."""
    path = edge_dir / "identity" / "device.json"
    device = json.loads(path.read_text())
    device["mqtt_port"] = free_port()
    device["http_url"] = f"https://127.0.0.1:{free_port()}"
    path.write_text(json.dumps(device, indent=2) + "\n")


def export(edge_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = edge_cli(edge_dir, "export", "--out", str(out), "--json", *extra)
    assert result.returncode == 0, result.stderr
    done: dict[str, Any] = json.loads(result.stdout)
    return done


def import_bundle(stack: Stack, bundle: Path, receipt: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return bridge_cmd(
        stack, "import", str(bundle), "--config", str(stack.bridge.config), "--receipt", str(receipt), "--json", *extra
    )


def imported(stack: Stack, bundle: Path, receipt: Path, *extra: str) -> dict[str, Any]:
    result = import_bundle(stack, bundle, receipt, *extra)
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def import_receipt(edge_dir: Path, receipt: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return edge_cli(edge_dir, "import-receipt", str(receipt), "--json", *extra)


def bridge_public_keys(stack: Stack, data_dir: Path | None = None) -> dict[str, str]:
    """The bridge's offline public keys, as `cloud-bridge offline-keys --json` shows them."""
    args = [*bridge_cli(), "offline-keys", "--json", "--data-dir", str(data_dir or stack.bridge.data_dir)]
    result = run(args)
    assert result.returncode == 0, result.stderr
    keys: dict[str, str] = json.loads(result.stdout)
    return keys


def enroll_offline(stack: Stack, site: Path, work: Path, name: str, *, prefix: tuple[str, ...] = ()) -> str:
    """Enroll a site on files only (ticket -> request -> response); returns the device id."""
    ticket, request, response = work / f"{name}.ticket", work / f"{name}.request", work / f"{name}.response"
    result = bridge_cmd(stack, "devices", "enroll-ticket", "--tenant", TENANT, "--name", name, "--out", str(ticket))
    assert result.returncode == 0, result.stderr
    result = run([*prefix, *edge_args(site, "enroll-request", "--ticket", str(ticket), "--out", str(request))])
    assert result.returncode == 0, result.stderr
    result = bridge_cmd(stack, "devices", "enroll-offline", str(request), "--out", str(response), "--json")
    assert result.returncode == 0, result.stderr
    result = run([*prefix, *edge_args(site, "enroll-import", str(response), "--json")])
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["device_id"])


def edge_args(edge_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge_outbox", *args, "--data-dir", str(edge_dir)]
