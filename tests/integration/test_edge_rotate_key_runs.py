"""`edge-outbox rotate-key` run twice at once: the second is refused in one line, and the device keeps a key
the bridge takes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from edge_outbox.enroll_client import enroll
from edge_outbox.identity import identity_dir, key_file
from intent_contract.device_token import public_key_pem
from tests.support.bridge import CountingIntegration, Harness, make_settings, running_bridge
from tests.support.https_stub import https_holding_first


@pytest.fixture
async def bridge(tmp_path: Path, server_cert_files: dict[str, Path]) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path / "bridge", server_cert_files)
    async for h in running_bridge(settings, server_cert_files["ca"], {"email.send": CountingIntegration()}):
        yield h


def _rotate_key(data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "edge_outbox", "rotate-key", "--data-dir", str(data_dir)]


@pytest.mark.timeout(120)
async def test_a_second_rotate_key_while_one_runs_is_refused_in_one_line(
    tmp_path: Path, bridge: Harness, ca: trustme.CA
) -> None:
    """Two runs at once both proposed the same next key; the first to hear back switched to it (next.key renamed
    to device.key), and the other, answered too, found no next.key: a FileNotFoundError traceback."""
    code = await asyncio.to_thread(bridge.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    with https_holding_first(ca, bridge.base_url, bridge.ca_file, "/v1/rotate-key") as relay:
        identity = await asyncio.to_thread(enroll, edge_dir, relay.url, code, bridge.ca_file)
        first = subprocess.Popen(_rotate_key(edge_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert await asyncio.to_thread(relay.held.wait, 60), "the first rotate-key's proposal never came"
            second = await asyncio.to_thread(
                subprocess.run, _rotate_key(edge_dir), capture_output=True, text=True, timeout=60, check=False
            )
        finally:
            relay.release.set()
            out, err = await asyncio.to_thread(first.communicate, timeout=60)
    assert "Traceback" not in second.stderr and "Traceback" not in err
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"Error: another rotate-key or import-receipt is running on {edge_dir}: wait for it to end (run it again if it"
        " failed)"
    ]
    assert first.returncode == 0, err
    assert f"device {identity.device_id} signs with its new key" in out
    # The key the device signs with is the one the bridge holds as its next.
    [device] = await asyncio.to_thread(bridge.bridge.registry.all_devices)
    assert device.next_public_key is not None
    assert device.next_public_key.strip() == public_key_pem(key_file(edge_dir).read_bytes()).strip()
    assert not (identity_dir(edge_dir) / "next.key").exists()
