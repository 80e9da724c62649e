"""SIGHUP to a running `edge-outbox run` (`systemctl reload edge-outbox`): it reads the bridge's address in
identity/device.json again and forwards there, where the signal used to end it (and systemd, counting SIGHUP a
clean exit, did not start it again). A real outbox process, a real bridge on loopback TLS."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_outbox.enroll_client import enroll
from edge_outbox.identity import identity_dir
from tests.support.bridge import Harness, counting, harness
from tests.support.edge import Client, OutboxProcess, cli, email
from tests.support.net import free_port, until

__all__ = ["counting", "harness"]  # fixtures


def _link(data_dir: Path) -> dict[str, Any]:
    result = cli(data_dir, "status", "--json")
    return dict(json.loads(result.stdout)["link"]) if result.stdout else {}


async def _enrolled(tmp_path: Path, harness: Harness) -> tuple[Path, dict[str, Any]]:
    code = await asyncio.to_thread(harness.bridge.registry.create_code, "acme", "edge-1", 600, time.time())
    edge_dir = tmp_path / "edge"
    await asyncio.to_thread(enroll, edge_dir, harness.base_url, code, harness.ca_file)
    return edge_dir, json.loads((identity_dir(edge_dir) / "device.json").read_text())


async def test_a_sighup_forwards_to_the_address_device_json_names_now(tmp_path: Path, harness: Harness) -> None:
    edge_dir, enrolled = await _enrolled(tmp_path, harness)
    device = identity_dir(edge_dir) / "device.json"
    device.write_text(json.dumps({**enrolled, "mqtt_port": free_port()}))  # the bridge is not (or no longer) there
    outbox = await asyncio.to_thread(OutboxProcess(edge_dir, free_port()).start)
    try:
        await until(
            lambda: asyncio.to_thread(lambda: "Connection refused" in (_link(edge_dir).get("error") or "")),
            timeout=30, what="a refused connect recorded",
        )  # fmt: skip
        device.write_text(json.dumps(enrolled))  # the bridge's address as it is now
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGHUP)
        await until(
            lambda: asyncio.to_thread(lambda: _link(edge_dir).get("state") == "connected"),
            timeout=30, what="connected to the address device.json names now",
        )  # fmt: skip
        assert outbox.proc.poll() is None
    finally:
        code = await asyncio.to_thread(outbox.stop)
    assert code == 0, outbox.log()
    assert "reloaded device.json and ca.pem" in outbox.log()


def _counters(port: int) -> dict[str, float]:
    """The unlabelled samples of the outbox's /metrics, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def test_a_sighup_keeps_the_link_counters_counting_from_the_start(tmp_path: Path, harness: Harness) -> None:
    """docs/operations.md: counters count from the start of the process. A reload starts a new forwarder, and
    edge_outbox_forwarded_intents_total and edge_outbox_bridge_acks_total (with the fleet report's sent, acked and
    connects) fell back to 0 at each `systemctl reload`, the outbox running on."""
    edge_dir, _ = await _enrolled(tmp_path, harness)
    metrics = free_port()
    outbox = await asyncio.to_thread(OutboxProcess(edge_dir, free_port(), "--metrics", f"127.0.0.1:{metrics}").start)
    app = await asyncio.to_thread(Client(outbox.port, "app").connect)
    try:
        for n in range(3):
            app.publish("outbox/app/email.send", email(f"m{n}"), name=f"m{n}")
        await until(
            lambda: asyncio.to_thread(lambda: _counters(metrics).get("edge_outbox_bridge_acks_total") == 3),
            timeout=30, what="3 intents acknowledged by the bridge",
        )  # fmt: skip
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGHUP)
        await until(lambda: "reloaded device.json and ca.pem" in outbox.log(), what="reloaded")
        after = await asyncio.to_thread(_counters, metrics)
    finally:
        app.close()
        code = await asyncio.to_thread(outbox.stop)
    assert code == 0, outbox.log()
    assert after["edge_outbox_forwarded_intents_total"] >= 3
    assert after["edge_outbox_bridge_acks_total"] >= 3


async def test_a_sighup_for_another_device_is_refused_and_the_outbox_goes_on(tmp_path: Path, harness: Harness) -> None:
    """A device.json naming another device (enrolled again beside the running outbox) takes a restart: a reload
    that forwarded as it would send the old device's intents in flight as the new one."""
    edge_dir, enrolled = await _enrolled(tmp_path, harness)
    device = identity_dir(edge_dir) / "device.json"
    outbox = await asyncio.to_thread(OutboxProcess(edge_dir, free_port()).start)
    try:
        await until(
            lambda: asyncio.to_thread(lambda: _link(edge_dir).get("state") == "connected"), timeout=30, what="up"
        )
        device.write_text(json.dumps({**enrolled, "device_id": "another-device"}))
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGHUP)
        await until(lambda: "reload refused: device.json is now device another-device" in outbox.log(), what="told")
        assert outbox.proc.poll() is None
        assert (await asyncio.to_thread(_link, edge_dir))["state"] == "connected"  # the link it had
    finally:
        code = await asyncio.to_thread(outbox.stop)
    assert code == 0, outbox.log()


async def test_a_sighup_after_the_config_file_changed_says_the_change_takes_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md: a reload cannot take `run`'s config file, and the log says so. It said only "reloaded
    device.json and ca.pem": an operator who edited /etc/edge-outbox/config.toml and ran `systemctl reload
    edge-outbox` (as for the bridge, whose reload reads its file) took the change for applied."""
    config = tmp_path / "config.toml"
    config.write_text('retention = "14d"\nattach_client_id = "edge-outbox"\n')
    monkeypatch.setenv("EDGE_OUTBOX_CONFIG", str(config))
    outbox = await asyncio.to_thread(OutboxProcess(tmp_path / "edge", free_port(), "--no-forward").start)
    try:
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGHUP)  # the file as the outbox started with it: nothing to say of it
        await until(lambda: outbox.log().count("SIGHUP: reloading") == 1 and "reload refused" in outbox.log())
        config.write_text('retention = "10d"\nmax_queue_items = 5\n# a secret-looking value is never shown\n')
        outbox.proc.send_signal(signal.SIGHUP)
        await until(lambda: "changed since the outbox started" in outbox.log(), what="the change named")
        config.write_text("retention = \n")
        outbox.proc.send_signal(signal.SIGHUP)
        await until(lambda: "is not valid TOML" in outbox.log(), what="the broken file named")
        assert outbox.proc.poll() is None
    finally:
        code = await asyncio.to_thread(outbox.stop)
    assert code == 0, outbox.log()
    lines = [line for line in outbox.log().splitlines() if str(config) in line]
    assert len(lines) == 2, outbox.log()
    assert "WARNING" in lines[0]
    assert (
        f"config file {config} changed since the outbox started (attach_client_id, max_queue_items, retention):"
        " run's options take a restart (systemctl restart edge-outbox); the outbox goes on with those it started"
        " with" in lines[0]
    )
    assert "10d" not in lines[0] and 'edge-outbox"' not in lines[0]
    assert f"config file {config} is not valid TOML" in lines[1] and "the outbox goes on with" in lines[1]
