"""`edge-outbox run` facing a bridge whose certificate it cannot verify: `status` says it is the certificate, and what
fixes it, where it said only that the link was connecting (and the log and the fleet report `bridge unreachable`);
so does a `flush` that ends with intents pending.

A real outbox process, a real TLS listener on loopback (trustme certificates) where the bridge should be."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from edge_outbox import db, ops
from edge_outbox.identity import Identity, save_identity
from edge_outbox.intake_rules import admit
from edge_outbox.ops import QueueLimits
from intent_contract.device_token import generate_private_key_pem
from tests.support.edge import OutboxProcess, cli
from tests.support.net import free_port, wait_until

Issue = Callable[[trustme.CA], trustme.LeafCert]
CERTS: dict[str, Issue] = {
    "wrong_name": lambda pinned: pinned.issue_cert("bridge.example"),  # the pinned CA, another name
    "other_ca": lambda _pinned: trustme.CA().issue_cert("127.0.0.1"),  # the right name, a CA this device never saw
}
SAYS = {
    "wrong_name": ("certificate is not valid for '127.0.0.1'", "set bridge_host to a name its certificate has"),
    "other_ca": ("certificate verify failed", "put the CA that signs the bridge's certificate in that file"),
}


@contextlib.contextmanager
def tls_listener(leaf: trustme.LeafCert) -> Iterator[int]:
    """Accepts TLS handshakes on loopback (each fails at the client's check) until the test ends."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        server.close()


def enrolled_at(data_dir: Path, port: int, ca: trustme.CA) -> None:
    """`data_dir` enrolled as device edge-1 of a bridge at 127.0.0.1:`port`, `ca` pinned."""
    pinned = data_dir.parent / "ca.pem"
    ca.cert_pem.write_to_path(str(pinned))
    identity = Identity("edge-1", "acme", "edge-1", "127.0.0.1", port, f"https://127.0.0.1:{port}", "bridge")
    save_identity(data_dir, identity, generate_private_key_pem(), pinned, None)


@pytest.mark.parametrize("kind", sorted(CERTS))
def test_status_names_the_certificate_and_its_fix(tmp_path: Path, ca: trustme.CA, kind: str) -> None:
    data_dir = tmp_path / "edge"
    with tls_listener(CERTS[kind](ca)) as port:
        enrolled_at(data_dir, port, ca)
        with OutboxProcess(data_dir, free_port()):

            def link_error() -> str:
                result = cli(data_dir, "status", "--json")
                return json.loads(result.stdout)["link"].get("error") or "" if result.stdout else ""

            error = wait_until(link_error, timeout=30, what="a failed connect recorded")
            text = cli(data_dir, "status").stdout
            pending(data_dir)
            flushed = cli(data_dir, "flush", "--timeout", "1s")  # a technician's link, through the running outbox
    assert error.startswith("the bridge's certificate does not verify (")
    for words in SAYS[kind]:
        assert words in error
    assert f"link error: {error}" in text
    assert flushed.returncode == 1
    assert flushed.stderr.splitlines()[-1].startswith("Error: 1 intent still pending after 1s (link ")
    assert flushed.stderr.splitlines()[-1].endswith(f": {error})")


@pytest.mark.parametrize("kind", sorted(CERTS))
def test_rotate_key_names_the_certificate_and_its_fix(tmp_path: Path, ca: trustme.CA, kind: str) -> None:
    """`rotate-key` said `cannot reach the bridge to rotate the key (run it again)`, which meets the same
    certificate however often it is run."""
    data_dir = tmp_path / "edge"
    with tls_listener(CERTS[kind](ca)) as port:
        enrolled_at(data_dir, port, ca)
        key = (data_dir / "identity" / "device.key").read_bytes()
        rotated = cli(data_dir, "rotate-key")
    assert rotated.returncode == 1
    [line] = rotated.stderr.splitlines()
    assert line.startswith("Error: cannot rotate the key: the bridge's certificate does not verify (")
    for words in SAYS[kind]:
        assert words in line
    assert (data_dir / "identity" / "device.key").read_bytes() == key


def test_status_beside_a_flush_shows_its_link(tmp_path: Path, ca: trustme.CA) -> None:
    """A flush with no outbox running runs the forwarder itself and holds the data dir's lock: status said
    `link: unknown (the running outbox recorded none: starting, or run with --no-forward)` all the while."""
    data_dir = tmp_path / "edge"
    with tls_listener(CERTS["wrong_name"](ca)) as port:
        enrolled_at(data_dir, port, ca)
        pending(data_dir)
        args = [sys.executable, "-m", "edge_outbox", "flush", "--timeout", "10m", "--data-dir", str(data_dir)]
        with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as flushing:
            try:

                def link() -> dict[str, Any]:
                    result = cli(data_dir, "status", "--json")
                    shown = json.loads(result.stdout) if result.stdout else {}
                    return dict(shown["link"]) if shown.get("running") and shown["link"].get("error") else {}

                shown = wait_until(link, timeout=30, what="the flush's link in status")
            finally:
                flushing.terminate()
    assert shown["state"] in ("offline", "connecting")
    assert "set bridge_host to a name its certificate has" in shown["error"]


def pending(data_dir: Path) -> None:
    """One intent waiting, stored as the intake stores it."""
    conn = db.connect(data_dir)
    try:
        payload = json.dumps({"to": "ops@example.com", "subject": "s", "text": "t"}).encode()
        now = time.time_ns() // 1_000_000
        ops.commit_intake(conn, admit("outbox/hvac/email.send", payload, now, lambda: "m1"), QueueLimits(), now)
    finally:
        conn.close()
