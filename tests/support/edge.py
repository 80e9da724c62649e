"""Real processes for edge tests: the outbox as a subprocess, paho publishers and status subscribers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.net import release_paho, wait_for_port, wait_until


class OutboxProcess:
    """`edge-outbox run` in a child process, with its log in data_dir/../outbox-<port>.log."""

    def __init__(self, data_dir: Path, port: int, *extra: str, prefix: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = port
        self.extra = extra
        self.prefix = prefix  # a command the outbox runs under, e.g. ("faketime", "-f", "-2h")
        self.log_path = data_dir.parent / f"outbox-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> OutboxProcess:
        args = [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(self.data_dir)]
        if not any(a.startswith("--attach") for a in self.extra):
            args += ["--listen", f"127.0.0.1:{self.port}"]
        with self.log_path.open("ab") as log:
            # Under a prefix (faketime forks the outbox and does not pass signals on) the outbox gets a process
            # group of its own, and every signal goes to the whole group: else the outbox outlives its test.
            self.proc = subprocess.Popen(
                [*self.prefix, *args, *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=bool(self.prefix),
            )
        if wait and not any(a.startswith("--attach") for a in self.extra):
            wait_for_port(self.port)
        return self

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.prefix:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self._signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code (under a prefix, the prefix command's)."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and self.prefix:
                self._signal(signal.SIGKILL)  # the prefix ended; its outbox may not have
            return self.proc.returncode if self.proc else 0
        self._signal(signal.SIGTERM)
        return self.proc.wait(15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> OutboxProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and (self.proc.poll() is None or self.prefix):
            self._signal(signal.SIGKILL)
            self.proc.wait(10)


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an ops command against a data dir."""
    return subprocess.run(
        [sys.executable, "-m", "edge_outbox", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_json(data_dir: Path, *args: str) -> Any:
    result = cli(data_dir, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Client:
    """A paho client on its own network thread that remembers which publishes were acknowledged."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        username: str | None = None,
        password: str | None = None,
        clean: bool = True,
        inflight: int = 100,
        reconnect_max_s: int = 2,
    ) -> None:
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        # mid -> name; mids are unique for the first 65,535 publishes of a client, plenty for a test.
        self._names: dict[int, str] = {}
        self._acked_mids: set[int] = set()
        self._subacked_mids: set[int] = set()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connect_result: Any = None
        self.connects = 0  # successful CONNACKs: more than one means the connection was lost and made again
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, password)
        c.max_inflight_messages_set(inflight)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, reconnect_max_s)  # paho reconnects by itself, as a real app's client does
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        self.client = c
        self.port = port

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connect_result = reason
        if not reason.is_failure:
            self.connects += 1
            self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._acked_mids.add(mid)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _reasons: Any, _p: Any) -> None:
        with self._lock:
            self._subacked_mids.add(mid)

    @property
    def acked(self) -> set[str]:
        """Names of the publishes whose PUBACK arrived."""
        with self._lock:
            return {self._names[m] for m in self._acked_mids if m in self._names}

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.statuses.append((message.topic, json.loads(message.payload)))

    def connect(self, *, wait: bool = True) -> Client:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if wait:
            wait_until(lambda: self.connected.is_set() or self.connect_result is not None, 10, what="CONNACK")
        return self

    def subscribe(self, topic: str) -> None:
        """Subscribe QoS 1 and return once the SUBACK arrived (so nothing published after is missed)."""
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS

        def subacked() -> bool:
            with self._lock:
                return mid in self._subacked_mids

        wait_until(subacked, 10, what=f"SUBACK for {topic}")

    def publish(self, topic: str, body: bytes | dict[str, Any], name: str = "", qos: int = 1) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        # Not under self._lock: paho may run callbacks (which take it) while publish() waits for its own.
        info = self.client.publish(topic, payload, qos=qos)
        if name:
            with self._lock:
                self._names[info.mid] = name

    def status_of(self, intent_id: str) -> list[str]:
        with self._lock:
            return [s["state"] for t, s in self.statuses if s["id"] == intent_id]

    def ids_with(self, state: str) -> set[str]:
        """Ids of the intents for which a status in `state` arrived."""
        with self._lock:
            return {s["id"] for _t, s in self.statuses if s["state"] == state}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release_paho(self.client)


def email(intent_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": "ops@example.com", "subject": "Alarm", "text": "Boiler 3 hot", **extra}
    if intent_id:
        body["id"] = intent_id
    return body


def stored_ids(data_dir: Path) -> dict[str, str]:
    """id -> state of every intent in the database (read directly, as a test oracle)."""
    conn = sqlite3.connect(data_dir / "outbox.db")
    try:
        return dict(conn.execute("SELECT id, state FROM intents"))
    finally:
        conn.close()


def stored_sessions(data_dir: Path) -> dict[str, int]:
    """client id -> last_seen (ms) of every persistent session in the database (read directly)."""
    conn = sqlite3.connect(f"file:{data_dir / 'outbox.db'}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT client_id, last_seen FROM sessions"))
    finally:
        conn.close()


def env_without_outbox() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGE_OUTBOX_")}


def old_final_intents(conn: sqlite3.Connection, count: int, updated: int, app: str = "old") -> None:
    """Store `count` delivered intents of `app` last changed at `updated` (ms), in one statement, without
    their status events (long pruned, as a site's are): rows for retention to purge."""
    conn.execute(
        """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO intents(id, app, kind, state, created, updated, payload, size)
        SELECT printf('%s-%d', ?, i), ?, 'email.send', 'delivered', ?, ?, X'7B7D', 2 FROM n""",
        (count, app, app, updated, updated),
    )
    conn.execute("DELETE FROM events WHERE app = ?", (app,))
