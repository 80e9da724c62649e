"""`cloud-bridge run` as operators run it: JSON log lines that name the device, the intent and the code;
SIGHUP and `cloud-bridge reload` (applied, or refused with every problem and exit 1); the control
socket only its owner can open."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tests.support.edge import Client, OutboxProcess, email
from tests.support.net import free_port, release_paho, wait_until
from tests.support.stack import APP, TENANT, BridgeProcess, bridge_cli


def config(smtp_port: int, extra_tenant: str = "") -> str:
    return f"""
[bridge]
retry_base = 0.05
retry_cap = 0.1
max_attempts = 2

[integrations.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
timeout = 2

[tenants.{TENANT}.policy]
kinds = ["email.send"]
email_domains = ["example.com"]
email_from = "alerts@e2e.example"
{extra_tenant}"""


def json_lines(bridge: BridgeProcess) -> list[dict[str, Any]]:
    lines = []
    for line in bridge.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def logged(bridge: BridgeProcess, **fields: str) -> list[dict[str, Any]]:
    return [entry for entry in json_lines(bridge) if all(entry.get(k) == v for k, v in fields.items())]


def refused_connect(bridge: BridgeProcess, ca: Path, device_id: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
    client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    client.username_pw_set(device_id, "not-a-token")
    try:
        client.connect("127.0.0.1", bridge.mqtt_port, 30)
        client.loop_start()
        wait_until(lambda: logged(bridge, message="device connect refused", device_id=device_id), 15,
                   what="the refusal logged")  # fmt: skip
    finally:
        client.loop_stop()
        client.disconnect()
        release_paho(client)


def test_json_logs_name_device_intent_and_code_and_reload_is_applied_or_refused(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    dead_smtp = free_port()  # nothing listens: every send is a transient smtp_connection error
    bridge = BridgeProcess(
        tmp_path, server_cert_files, config_text=config(dead_smtp), run_args=("--log-format", "json")
    )
    edge: OutboxProcess | None = None
    app: Client | None = None
    try:
        bridge.start()
        device_id = bridge.enroll(tmp_path / "edge")
        edge = OutboxProcess(tmp_path / "edge", free_port()).start()
        app = Client(edge.port, "ops-app").connect()
        app.publish(f"outbox/{APP}/email.send", email("ops-1"), name="ops-1")
        wait_until(lambda: logged(bridge, intent_id="ops-1", state="failed"), 30, what="the intent's end logged")

        # Every line about the intent says which device, which intent, what kind and why.
        [retry] = logged(bridge, intent_id="ops-1", state="queued")
        [end] = logged(bridge, intent_id="ops-1", state="failed")
        for entry in (retry, end):
            assert (entry["device_id"], entry["tenant"], entry["kind"]) == (device_id, TENANT, "email.send")
            assert entry["code"] == "smtp_connection"
            assert entry["level"] in {"info", "warning"} and entry["time"].endswith("Z")
        refused_connect(bridge, server_cert_files["ca"], "dev-not-enrolled")
        [refusal] = logged(bridge, message="device connect refused", device_id="dev-not-enrolled")
        assert refusal["code"] and refusal["peer"]

        # The control socket: the bridge's user only.
        socket_file = bridge.data_dir / "control.sock"
        assert socket_file.stat().st_mode & 0o777 == 0o600

        # SIGHUP reloads; the log says so.
        bridge.config.write_text(config(dead_smtp, 'sms_prefixes = ["+41"]'))
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: logged(bridge, code="reloaded"), 15, what="the reload logged")
        assert "generation 2" in logged(bridge, code="reloaded")[0]["message"]

        # `cloud-bridge reload` with a broken config: refused, every problem named, exit 1.
        bridge.config.write_text(config(dead_smtp).replace("timeout = 2", "timeout = 0\nhots = 1"))
        result = subprocess.run(
            [*bridge_cli(), "reload", "--data-dir", str(bridge.data_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1
        assert "reload refused, the running config stays in force" in result.stderr
        assert "integrations.smtp.timeout: Input should be greater than 0" in result.stderr
        assert "integrations.smtp.hots: unknown key" in result.stderr
        assert "Traceback" not in result.stderr
        assert logged(bridge, code="reload_refused")
    finally:
        if app is not None:
            app.close()
        if edge is not None:
            edge.stop()
        bridge.stop()


def test_reload_without_a_running_bridge_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [*bridge_cli(), "reload", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "no bridge answers on" in result.stderr and "Traceback" not in result.stderr


def test_a_secret_written_where_its_variable_name_goes_is_quoted_nowhere(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """The token written where its variable's name goes: not in reload's answer, the log or a failed start."""
    token = "crm_live_9f8e7d6c5b4a3f2e1d0c"  # it could be a variable's name, too
    slips = f"""
[integrations.http.credentials.crm]
base_urls = ["https://api.crm.example/v1/"]
token_env = "{token}"

[tenants.other.policy]
kinds = ["{token}"]
"""
    bridge = BridgeProcess(tmp_path, server_cert_files, config_text=config(free_port()))
    try:
        bridge.start()
        bridge.config.write_text(config(free_port()) + slips)
        result = subprocess.run(
            [*bridge_cli(), "reload", "--data-dir", str(bridge.data_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1
        # What is wrong and where, without the value.
        assert "integrations.http.credentials.crm: token_env: the environment variable it names is not set" in (
            result.stderr
        )
        assert "tenants.other.policy.kinds.0: unknown kind (known: " in result.stderr
        wait_until(lambda: "config reload refused" in bridge.log(), 15, what="the refusal logged")
    finally:
        bridge.stop()
    started = _start_with(bridge.config, tmp_path / "second", server_cert_files)
    assert started.returncode != 0
    assert "token_env: the environment variable it names is not set" in started.stderr
    for shown in (result.stderr, bridge.log(), started.stderr):
        assert token not in shown


def _start_with(config: Path, data_dir: Path, certs: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """`cloud-bridge run` with `config` on free ports, as a start after the running node's stop would."""
    return subprocess.run(
        [*bridge_cli(), "run", "--data-dir", str(data_dir), "--config", str(config),
         "--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{free_port()}",
         "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_config_file_that_is_not_utf8_is_refused_by_line_and_quoted_nowhere(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """A Latin-1 byte in the file: tomllib's UnicodeDecodeError held the whole file, secret pasted in included,
    and a reload logged it in a traceback and gave `cloud-bridge reload` no answer; a start printed it too."""
    token = "sk_live_4f3e2d1c0b9a8f7e"
    broken = config(free_port()).encode() + f"# old key {token} (caf\xe9)\n".encode("latin-1")
    bridge = BridgeProcess(tmp_path, server_cert_files, config_text=config(free_port()))
    try:
        bridge.start()
        bridge.config.write_bytes(broken)
        result = subprocess.run(
            [*bridge_cli(), "reload", "--data-dir", str(bridge.data_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1
        line = broken.count(b"\n")
        assert f"reload refused, the running config stays in force: config file {bridge.config} is not UTF-8" in (
            result.stderr
        )
        assert f"(line {line}, column " in result.stderr
        wait_until(lambda: "config reload refused" in bridge.log(), 15, what="the refusal logged")
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: bridge.log().count("config reload refused") == 2, 15, what="the SIGHUP's refusal logged")
    finally:
        bridge.stop()
    started = _start_with(bridge.config, tmp_path / "second", server_cert_files)
    assert started.returncode == 1
    assert "is not UTF-8 text" in started.stderr
    edge_config = tmp_path / "edge.toml"
    edge_config.write_bytes(f'data_dir = "{tmp_path / "edge"}"\n# {token} caf\xe9\n'.encode("latin-1"))
    edge = subprocess.run(
        [sys.executable, "-m", "edge_outbox", "--config", str(edge_config), "status"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert edge.returncode != 0
    assert f"{edge_config} is not UTF-8 text (line 2, column " in edge.stderr
    for shown in (result.stderr, bridge.log(), started.stderr, edge.stderr):
        assert token not in shown
        assert "Traceback" not in shown


def test_a_reload_refused_for_many_problems_prints_every_one(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """`cloud-bridge reload` read the answer under the request's 4 KiB limit: 120 problems (12 KB) crashed it with a
    traceback ("chunk is longer than limit"), and the operator saw none of them."""
    bridge = BridgeProcess(tmp_path, server_cert_files, config_text=config(free_port()))
    try:
        bridge.start()
        tenants = "".join(f'\n[tenants.t{n}.policy]\nkinds = ["fax.send"]\n' for n in range(120))
        bridge.config.write_text(config(free_port()) + tenants)
        result = subprocess.run(
            [*bridge_cli(), "reload", "--data-dir", str(bridge.data_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "reload refused, the running config stays in force" in result.stderr
        assert all(f"tenants.t{n}.policy.kinds.0: unknown kind" in result.stderr for n in range(120))
    finally:
        bridge.stop()


def _hangup_held(pid: int) -> bool:
    """Whether a SIGHUP sent to `pid` waits, blocked, to be taken (pending alone: it may be on its way)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    bit = 1 << (signal.SIGHUP - 1)
    return all(int(fields[mask].strip(), 16) & bit for mask in ("ShdPnd", "SigBlk"))


def _open_for_writing(fifo: Path) -> int | None:
    """A write end of `fifo` once a reader has it open (blocked in its open), else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


def test_a_sighup_during_the_start_is_held_and_reloads_once_the_node_runs(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """A SIGHUP before the node's handler was installed (reading its config, importing: its first second) took
    the default action: the node died, by a `kill -HUP` or a log rotation right after a (re)start."""
    text = config(free_port())
    bridge = BridgeProcess(tmp_path, server_cert_files, config_text=text)
    bridge.config.unlink()
    os.mkfifo(bridge.config)  # the start's read of its config waits here until the test writes it
    whole = tmp_path / "whole.toml"
    whole.write_text(text)
    starting = threading.Thread(target=bridge.start)
    starting.start()
    try:
        fd = wait_until(lambda: _open_for_writing(bridge.config), 30, what="the node reading its config")
        os.replace(whole, bridge.config)  # the reload after the start reads a plain file
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGHUP)
        pid = bridge.proc.pid
        wait_until(lambda: bridge.proc.poll() is not None or _hangup_held(pid), 15, what="the SIGHUP taken")
        assert bridge.proc.poll() is None, f"the SIGHUP killed the starting node ({bridge.proc.returncode})"
        os.write(fd, text.encode())
        os.close(fd)
        starting.join(60)
        wait_until(lambda: "config reloaded (generation 2)" in bridge.log(), 15, what="the held SIGHUP's reload")
    finally:
        starting.join(60)
        bridge.stop()
    assert "generation 3" not in bridge.log()
