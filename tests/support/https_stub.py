"""HTTPS servers on loopback, in a thread (trustme certificates): one fixed answer, or a relay that loses answers
or holds the first."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme


@contextlib.contextmanager
def https_answering(ca: trustme.CA, status: int, body: bytes) -> Iterator[int]:
    """Serve `status` and the JSON `body` to every GET and POST on 127.0.0.1; yields the port."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.do_GET()

        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    with _serving(ca, Handler) as port:
        yield port


@dataclass(slots=True)
class Relay:
    port: int
    statuses: list[int] = field(default_factory=list)  # what the target answered, in order
    held: threading.Event = field(default_factory=threading.Event)  # https_holding_first: the first POST came
    release: threading.Event = field(default_factory=threading.Event)  # https_holding_first: relay it now

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextlib.contextmanager
def https_losing_answers(ca: trustme.CA, target: str, target_ca: Path, lose: int) -> Iterator[Relay]:
    """Relay every POST on 127.0.0.1 to `target` (an https:// origin verified with `target_ca`); the first
    `lose` answers are lost: the relay hangs up once `target` has answered."""
    relay = Relay(0)
    statuses = relay.statuses
    target_context = ssl.create_default_context(cafile=str(target_ca))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, answer = _relayed(self, target, target_context, body)
            statuses.append(status)
            if len(statuses) <= lose:
                self.close_connection = True  # the target acted on it; its answer never reaches the client
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            _reply(self, status, answer)

        def log_message(self, *_: object) -> None:
            pass

    with _serving(ca, Handler) as relay.port:
        yield relay


@contextlib.contextmanager
def https_holding_first(ca: trustme.CA, target: str, target_ca: Path, path: str) -> Iterator[Relay]:
    """Relay every POST on 127.0.0.1 to `target` (an https:// origin verified with `target_ca`); the first one to
    `path` waits until `relay.release` is set (`relay.held` says it came), the others go at once."""
    relay = Relay(0)
    target_context = ssl.create_default_context(cafile=str(target_ca))
    first = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == path and first.acquire(blocking=False):
                relay.held.set()
                relay.release.wait(30)
            status, answer = _relayed(self, target, target_context, body)
            relay.statuses.append(status)
            _reply(self, status, answer)

        def log_message(self, *_: object) -> None:
            pass

    with _serving(ca, Handler) as relay.port:
        try:
            yield relay
        finally:
            relay.release.set()


@contextlib.contextmanager
def _serving(ca: trustme.CA, handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """`handler` over TLS (a certificate of `ca` for 127.0.0.1) on a free port, in a thread; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _relayed(handler: BaseHTTPRequestHandler, target: str, context: ssl.SSLContext, body: bytes) -> tuple[int, bytes]:
    """The handler's POST sent on to `target`: the status and body of its answer."""
    request = urllib.request.Request(
        target + handler.path, data=body, method="POST", headers={"Content-Type": handler.headers["Content-Type"]}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _reply(handler: BaseHTTPRequestHandler, status: int, answer: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(answer)))
    handler.end_headers()
    handler.wfile.write(answer)
