"""Helpers for tests that run real servers on loopback."""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import paho.mqtt.client as mqtt

T = TypeVar("T")


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never handed out before in this run, and never 1883.

    Ports come from below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up here): a port chosen by
    bind(0) is an ephemeral one, and the kernel may hand it to an outgoing connection's local end before the test's
    server binds it (seen in CI as "address already in use" on --metrics-listen).
    """
    low, _ = _ephemeral_range()
    while True:
        port = random.randrange(10_000, low)
        if port in _handed_out or port == 1883:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(part) for part in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return max(low, 10_500), high


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def release_paho(client: mqtt.Client) -> None:
    """Close every socket of a paho client whose loop thread has stopped.

    loop_start() makes a loopback socket pair that paho closes only in Client.__del__. Our clients sit
    in reference cycles (their callbacks are bound methods), and the garbage collector may finalize
    those sockets before the client: they warn as unclosed, which, with warnings as errors, failed
    a whole session at its very end (now and then, as the collector's order goes).
    """
    client._reset_sockets()


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate()` until it is truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met after {timeout}s")


async def until(
    predicate: Callable[[], object | Awaitable[object]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Await until `predicate()` (plain or async) is truthy, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{what} not met after {timeout}s")


def sockets_to(port: int) -> list[socket.socket]:
    """This process's TCP sockets connected to `port` on loopback, as duplicates of their descriptors (an
    option read from a duplicate is the socket's own). Close them after use."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:  # closed meanwhile
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket
            os.close(fd)
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[1:2] == (port,):
                found.append(sock)
                continue
        except OSError:  # not connected
            pass
        sock.close()
    return found


async def sockets_closed(port: int, timeout: float = 30.0) -> None:
    """Await, on the running loop, until this process holds no socket connected to `port`.

    A client's TLS close goes on after the call that closed it returns (close_notify out, the peer's
    answer in), and only the event loop finishes it: a test whose loop closes first leaves the socket
    open, a ResourceWarning at the next collection (seen under a loaded disk in the SMTP tests).
    """

    def none_left() -> bool:
        found = sockets_to(port)
        for sock in found:
            sock.close()
        return not found

    await until(none_left, timeout=timeout, what=f"sockets to port {port} closed")


def open_to(port: int, source: str = "127.0.0.1") -> socket.socket | None:
    """A TCP connection from `source` to `port` on 127.0.0.1 (left open, for the caller to close), or None when
    it cannot be made within 2 s (the server's accept queue full, say)."""
    sock = socket.socket()
    sock.settimeout(2)
    sock.bind((source, 0))
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def open_files_limit(pid: int) -> tuple[int, int]:
    """The process's RLIMIT_NOFILE (soft, hard), as /proc says."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files")
