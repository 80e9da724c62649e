"""The outbox out of file descriptors (its RLIMIT_NOFILE set low with util-linux's prlimit): a line, not a flood,
and it serves again once connections end; and it raises its soft limit to the hard one, as the bridge does."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.edge import Client, OutboxProcess, email
from tests.support.net import free_port, open_files_limit, open_to, wait_until

LIMIT = 100  # descriptors the outbox may hold: the connections below take every one left


def test_an_outbox_out_of_descriptors_logs_a_line_not_a_flood_and_serves_again(tmp_path: Path) -> None:
    """asyncio reported each accept() that failed with EMFILE with a traceback, up to 100 times per wake-up of the
    listener, for as long as the descriptors were taken (the bridge's fix, 03febf6, had left the edge's)."""
    prefix = ("prlimit", f"--nofile={LIMIT}:{LIMIT}", "--")
    held: list[socket.socket] = []
    with OutboxProcess(tmp_path / "data", free_port(), prefix=prefix) as outbox:
        try:
            for _ in range(3 * LIMIT):
                sock = open_to(outbox.port)
                if sock is None:  # the kernel's accept queue is full too
                    break
                held.append(sock)
            wait_until(lambda: "Too many open files" in outbox.log(), what="every descriptor taken")
        finally:
            for sock in held:
                sock.close()
        app = Client(outbox.port, "app").connect()  # without a restart (accept is tried again every second)
        assert app.connected.is_set()
        app.publish("outbox/app/email.send", email("after"), name="after")
        wait_until(lambda: len(app.acked) == 1, what="its PUBACK")
        app.close()
        log = outbox.log()
    lines = [line for line in log.splitlines() if "Too many open files" in line]
    assert 1 <= len(lines) <= 3, f"{len(lines)} lines:\n" + "\n".join(lines[:5])
    assert f"127.0.0.1:{outbox.port} cannot accept connections: Too many open files" in lines[0]
    assert "Traceback" not in log, log[-3000:]


def test_the_outbox_raises_its_soft_descriptor_limit_to_the_hard_one(tmp_path: Path) -> None:
    prefix = ("prlimit", f"--nofile={LIMIT}:4000", "--")
    with OutboxProcess(tmp_path / "data", free_port(), prefix=prefix) as outbox:
        assert outbox.proc is not None
        wait_until(lambda: "file descriptors: up to 4000" in outbox.log(), what="the limit raised")
        assert open_files_limit(outbox.proc.pid) == (4000, 4000)
