"""End-to-end demo on one machine: cloud bridge + SMTP sink + edge outbox, one email, and its status.

Everything runs on free loopback ports in a temporary directory, and everything is stopped at the
end (also on failure or Ctrl-C). Run it with ./scripts/demo.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiosmtpd.controller import Controller
from paho.mqtt.enums import CallbackAPIVersion

BIN = Path(sys.executable).parent


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != 1883:
            return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class Sink:
    """The 'email provider': an SMTP server that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        self.messages.append(message_from_bytes(envelope.content))
        self.arrived.set()
        return "250 OK"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(*args: str) -> str:
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="edge-outbox-demo-"))
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    sink = Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    try:
        step(f"SMTP sink (the provider) on 127.0.0.1:{smtp.port}")
        smtp.start()

        step("cloud bridge: dev certificates, config, start")
        run("cloud-bridge", "dev-certs", str(work / "certs"))
        mqtt_port, http_port, edge_port = free_port(), free_port(), free_port()
        (work / "bridge.toml").write_text(
            f'[integrations.smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\nsecurity = "none"\n\n'
            '[tenants.demo.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n'
            'email_from = "alerts@demo.example"\n'
        )
        bridge_log = work / "bridge.log"
        with bridge_log.open("wb") as log:
            bridge = subprocess.Popen(
                [
                    str(BIN / "cloud-bridge"),
                    "run",
                    "--data-dir",
                    str(work / "bridge"),
                    "--config",
                    str(work / "bridge.toml"),
                    "--listen",
                    f"127.0.0.1:{mqtt_port}",
                    "--http-listen",
                    f"127.0.0.1:{http_port}",
                    "--tls-cert",
                    str(work / "certs/server.pem"),
                    "--tls-key",
                    str(work / "certs/server.key"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(("bridge", bridge, bridge_log))
        wait_for_port(http_port, bridge)
        print(f"    MQTT/TLS on 127.0.0.1:{mqtt_port}, HTTPS (enrollment) on 127.0.0.1:{http_port}")

        step("enroll the edge: a one-time code at the bridge, a key made on the edge")
        code = json.loads(
            run(
                "cloud-bridge",
                "devices",
                "enroll-code",
                "--data-dir",
                str(work / "bridge"),
                "--tenant",
                "demo",
                "--name",
                "demo-edge",
                "--ttl",
                "10m",
                "--json",
            )
        )["code"]
        print(
            "    "
            + run(
                "edge-outbox",
                "enroll",
                "--data-dir",
                str(work / "edge"),
                "--bridge",
                f"https://127.0.0.1:{http_port}",
                "--code",
                code,
                "--ca",
                str(work / "certs/ca.pem"),
            ).strip()
        )

        step(f"edge outbox on 127.0.0.1:{edge_port} (port 1883 may be taken; it does not matter)")
        edge_log = work / "edge.log"
        with edge_log.open("wb") as log:
            edge = subprocess.Popen(
                [
                    str(BIN / "edge-outbox"),
                    "run",
                    "--data-dir",
                    str(work / "edge"),
                    "--listen",
                    f"127.0.0.1:{edge_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(("edge", edge, edge_log))
        wait_for_port(edge_port, edge)

        step("an app publishes an email.send intent (MQTT QoS 1) and listens for its status")
        statuses: list[dict[str, Any]] = []
        delivered = threading.Event()

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            status = json.loads(message.payload)
            statuses.append(status)
            print(f"    status on {message.topic}: {status['state']} {status['code']}".rstrip(), flush=True)
            if status["state"] in ("delivered", "failed", "rejected", "expired"):
                delivered.set()

        app = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-app", protocol=mqtt.MQTTv311)
        app.on_message = on_message
        app.connect("127.0.0.1", edge_port)
        app.loop_start()
        app.subscribe("outbox/demo-app/status/#", qos=1)
        time.sleep(0.3)
        intent = {
            "id": "demo-1",
            "to": "ops@example.com",
            "subject": "Boiler 3 is hot",
            "text": "Boiler 3 reached 96 C at the demo site.",
        }
        app.publish("outbox/demo-app/email.send", json.dumps(intent), qos=1).wait_for_publish(10)
        print("    PUBACK received: the intent is on the edge's disk")

        if not sink.arrived.wait(60):
            raise RuntimeError("no email arrived at the sink within 60 s")
        mail = sink.messages[0]
        step("the email arrived at the SMTP sink")
        print(
            f"    From: {mail['From']}\n    To: {mail['To']}\n    Subject: {mail['Subject']}\n"
            f"    Message-ID: {mail['Message-ID']}"
        )
        if not delivered.wait(30):
            raise RuntimeError("no final status reached the app within 30 s")
        app.loop_stop()
        app.disconnect()
        final = statuses[-1]
        if final["state"] != "delivered":
            raise RuntimeError(f"intent ended {final['state']}: {final['code']} {final['detail']}")
        step("the app saw: " + " -> ".join(s["state"] for s in statuses))
        print("\nDemo finished: 1 intent published, 1 email delivered, status `delivered` back at the app.")
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"\nDemo failed: {exc}", file=sys.stderr)
        for name, _proc, log_path in procs:
            print(f"--- {name} log ---\n{log_path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        return 1
    finally:
        for _name, proc, _log in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        smtp.stop()
        if os.environ.get("DEMO_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
