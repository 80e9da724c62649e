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


class Demo:
    """The parts of the demo, started in order and always stopped."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="edge-outbox-demo-"))
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.sink = Sink()
        self.smtp = Controller(self.sink, hostname="127.0.0.1", port=free_port())
        self.mqtt_port, self.http_port, self.edge_port = free_port(), free_port(), free_port()

    def spawn(self, name: str, *args: str, port: int) -> None:
        log_path = self.work / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log_path))
        wait_for_port(port, proc)

    def start_bridge(self) -> None:
        step(f"SMTP sink (the provider) on 127.0.0.1:{self.smtp.port}")
        self.smtp.start()
        step("cloud bridge: dev certificates, config, start")
        run("cloud-bridge", "dev-certs", str(self.work / "certs"))
        (self.work / "bridge.toml").write_text(
            f'[integrations.smtp]\nhost = "127.0.0.1"\nport = {self.smtp.port}\nsecurity = "none"\n\n'
            '[tenants.demo.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n'
            'email_from = "alerts@demo.example"\n'
        )
        certs = self.work / "certs"
        self.spawn(
            "bridge",
            "cloud-bridge",
            "run",
            "--data-dir",
            str(self.work / "bridge"),
            "--config",
            str(self.work / "bridge.toml"),
            "--listen",
            f"127.0.0.1:{self.mqtt_port}",
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server.key"),
            port=self.http_port,
        )
        print(f"    MQTT/TLS on 127.0.0.1:{self.mqtt_port}, HTTPS (enrollment) on 127.0.0.1:{self.http_port}")

    def start_edge(self) -> None:
        step("enroll the edge: a one-time code at the bridge, a key made on the edge")
        code = json.loads(
            run(
                "cloud-bridge",
                "devices",
                "enroll-code",
                "--data-dir",
                str(self.work / "bridge"),
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
                str(self.work / "edge"),
                "--bridge",
                f"https://127.0.0.1:{self.http_port}",
                "--code",
                code,
                "--ca",
                str(self.work / "certs/ca.pem"),
            ).strip()
        )
        step(f"edge outbox on 127.0.0.1:{self.edge_port} (port 1883 may be taken; it does not matter)")
        self.spawn(
            "edge",
            "edge-outbox",
            "run",
            "--data-dir",
            str(self.work / "edge"),
            "--listen",
            f"127.0.0.1:{self.edge_port}",
            port=self.edge_port,
        )

    def send_one_email(self) -> list[dict[str, Any]]:
        step("an app publishes an email.send intent (MQTT QoS 1) and listens for its status")
        statuses: list[dict[str, Any]] = []
        final = threading.Event()

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            status = json.loads(message.payload)
            statuses.append(status)
            print(f"    status on {message.topic}: {status['state']} {status['code']}".rstrip(), flush=True)
            if status["state"] in ("delivered", "failed", "rejected", "expired"):
                final.set()

        app = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-app", protocol=mqtt.MQTTv311)
        app.on_message = on_message
        app.connect("127.0.0.1", self.edge_port)
        app.loop_start()
        try:
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
            if not self.sink.arrived.wait(60):
                raise RuntimeError("no email arrived at the sink within 60 s")
            mail = self.sink.messages[0]
            step("the email arrived at the SMTP sink")
            print(
                f"    From: {mail['From']}\n    To: {mail['To']}\n    Subject: {mail['Subject']}\n"
                f"    Message-ID: {mail['Message-ID']}"
            )
            if not final.wait(30):
                raise RuntimeError("no final status reached the app within 30 s")
        finally:
            app.loop_stop()
            app.disconnect()
        return statuses

    def report_failure(self, exc: BaseException) -> None:
        print(f"\nDemo failed: {exc}", file=sys.stderr)
        for name, _proc, log_path in self.procs:
            print(f"--- {name} log ---\n{log_path.read_text(errors='replace')[-3000:]}", file=sys.stderr)

    def stop(self) -> None:
        for _name, proc, _log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.smtp.stop()
        if os.environ.get("DEMO_KEEP") != "1":
            shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    demo = Demo()
    try:
        demo.start_bridge()
        demo.start_edge()
        statuses = demo.send_one_email()
    except (RuntimeError, OSError) as exc:
        demo.report_failure(exc)
        return 1
    finally:
        demo.stop()
    step("the app saw: " + " -> ".join(s["state"] for s in statuses))
    if statuses[-1]["state"] != "delivered":
        print(f"Demo failed: the intent ended {statuses[-1]['state']} ({statuses[-1]['code']})", file=sys.stderr)
        return 1
    print("\nDemo finished: 1 intent published, 1 email delivered, status `delivered` back at the app.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
