"""The bridge as real processes: `cloud-bridge run`, and `devices revoke` from another process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.intent_sql import IntentQuery
from cloud_bridge.node import Bridge
from tests.support.bridge import (
    CountingIntegration,
    Harness,
    HeldIntegration,
    counting,
    email,
    harness,
    make_settings,
    running_bridge,
    until,
)
from tests.support.net import free_port, wait_for_port
from tests.support.stack import BridgeProcess

__all__ = ["counting", "harness"]

CLI = [sys.executable, "-m", "cloud_bridge.cli"]


def _cli(*args: str, data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=timeout, check=False
    )


async def test_revoke_from_another_process_drops_the_live_session_within_2s(harness: Harness) -> None:
    creds = await harness.enroll()
    client = await harness.connect(creds)
    assert client.accepted
    result = await asyncio.to_thread(_cli, "devices", "revoke", creds.device_id, data_dir=harness.settings.data_dir)
    assert result.returncode == 0, result.stderr
    revoked_at = time.monotonic()
    await until(client.disconnected.is_set, timeout=5, what="session dropped")
    assert time.monotonic() - revoked_at < 2.0
    await client.stop()
    again = await harness.connect(creds)
    assert not again.accepted
    await again.stop()


def _https_get(url: str, ca: Path) -> dict[str, str]:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        data: dict[str, str] = json.loads(response.read())
    return data


def test_cloud_bridge_run_as_a_subprocess(tmp_path: Path, server_cert_files: dict[str, Path]) -> None:
    mqtt_port, http_port = free_port(), free_port()
    args = [
        *CLI,
        "run",
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        f"127.0.0.1:{mqtt_port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--tls-cert",
        str(server_cert_files["cert"]),
        "--tls-key",
        str(server_cert_files["key"]),
    ]
    env = {k: v for k, v in os.environ.items() if k != "CLOUD_BRIDGE_DATA_DIR"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_port(http_port, timeout=30)
        wait_for_port(mqtt_port, timeout=30)
        healthy = _https_get(f"https://127.0.0.1:{http_port}/healthz", server_cert_files["ca"])
        assert healthy == {"status": "ok", "problems": []}

        # A second bridge on the same MQTT port fails with one line naming the flag, no traceback.
        second = subprocess.run(
            [*args[:4], "--data-dir", str(tmp_path / "other"), *args[6:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode != 0
        assert "--listen" in second.stderr
        assert "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "no integration enabled" in stderr
    assert "Traceback" not in stderr


def test_run_without_certificates_is_a_clean_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "run", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "--tls-cert" in result.stderr
    assert "Traceback" not in result.stderr


def test_http_port_in_use_names_its_flag(tmp_path: Path, server_cert_files: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *CLI,
                "run",
                "--data-dir",
                str(tmp_path),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--http-listen",
                f"127.0.0.1:{port}",
                "--tls-cert",
                str(server_cert_files["cert"]),
                "--tls-key",
                str(server_cert_files["key"]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert "--http-listen" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_second_node_on_the_same_sqlite_data_dir_is_refused_and_runs_nothing(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """The SQLite store is one node's: at start a node puts the rows left running back in the queue. A second node
    on the same directory (other ports) did that to the row the first was running, and ran it again: executed
    twice. It only warned that another bridge answered on the control socket."""
    held = HeldIntegration()
    first_settings = make_settings(tmp_path, server_cert_files)
    async for first in running_bridge(first_settings, server_cert_files["ca"], {"email.send": held}):
        client = await first.connect(await first.enroll())
        client.send([email("once-1")])
        await until(lambda: len(held.calls) == 1, what="the first node running the intent")
        other = CountingIntegration()
        second = Bridge(make_settings(tmp_path, server_cert_files), integrations={"email.send": other})
        try:
            with pytest.raises(ConfigError, match=r"another bridge node runs on .* \(node node-a, pid "):
                await second.start()
        finally:
            await second.stop()
        held.release.set()
        await until(partial(lambda c: "delivered" in c.states().get("once-1", []), client), what="delivered once")
        await client.stop()
        assert (len(held.calls), other.calls) == (1, [])
    # Stopped, the first node leaves the directory to the next one.
    async for _again in running_bridge(make_settings(tmp_path, server_cert_files), server_cert_files["ca"], {}):
        pass


async def test_a_revoked_devices_queued_work_ends_settled_and_retention_can_purge_it(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """The queued rows of a revoked device end failed/device_revoked, and no edge will ever confirm them: they
    stayed unconfirmed, which retention and `intents purge` never delete, for ever (a flooding device revoked
    with 1,000,000 admitted intents left 1,000,000 rows that nothing but SQL could remove)."""
    held = HeldIntegration()
    settings = make_settings(tmp_path, server_cert_files)
    async for bridge in running_bridge(settings, server_cert_files["ca"], {"email.send": held}):
        await _revoke_with_work_queued(bridge, held)


async def _revoke_with_work_queued(bridge: Harness, held: HeldIntegration) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    ids = [f"q{n}" for n in range(10)]
    client.send([email(i) for i in ids])
    await until(lambda: all("accepted" in client.states().get(i, []) for i in ids), what="all admitted")
    await until(lambda: len(held.calls) == held.concurrency, what="the first ones running")
    bridge.bridge.registry.revoke(creds.device_id, time.time())
    await until(client.disconnected.is_set, timeout=10, what="session dropped")
    queued = len(ids) - held.concurrency

    async def all_ended() -> bool:
        records = await bridge.bridge.ledger.audit(device_id=creds.device_id)
        return sum(1 for r in records if r.code == "device_revoked") == queued

    held.release.set()  # the running ones end as they would; the queued ones are claimed, and not run
    await until(all_ended, what="the queued rows ended device_revoked")
    await client.stop()
    query = IntentQuery(device_id=creds.device_id)
    # The rows that ran are settled too, by their finish (their call was under way at the revocation).
    await until(lambda: all(r.confirmed for r in bridge.bridge.store.intents.rows(query)), what="all settled")
    later = time.time() + 3600  # past every retention age, and past max_intent_age
    purged = await asyncio.to_thread(bridge.bridge.store.intents.purge, later, None, later * 1000)
    assert purged.intents == len(ids)
    assert len(held.calls) == held.concurrency


def test_a_sigterm_is_logged_stopping_then_stopped_and_exits_0(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """A node stopped by SIGTERM (systemd, a deploy) left no line saying so: its log ended where it last worked."""
    bridge = BridgeProcess(tmp_path, server_cert_files, free_port()).start()
    assert bridge.stop() == 0
    lines = bridge.log_path.read_text().splitlines()
    said = [n for n, line in enumerate(lines) if line.endswith((" stopping", " stopped"))]
    assert [lines[n].rsplit(" ", 1)[1] for n in said] == ["stopping", "stopped"], lines[-5:]
