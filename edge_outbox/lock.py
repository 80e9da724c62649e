"""One running outbox per data dir: a lock held for the life of `edge-outbox run`.

Two outboxes on one database would both forward the same intents and apply each other's acks; the
first one then looked connected while sending nothing. The lock is an advisory `flock` on
DATA_DIR/outbox.lock, released by the kernel when the process ends however it ends (SIGKILL too), so
a stale lock never blocks a restart. The file says who holds it, for the refusal message and for
ops commands that want to know whether an outbox is running.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from edge_outbox.errors import ConfigError

LOCK_NAME = "outbox.lock"


class DataDirLock:
    """Held from `acquire()` until `release()` or the end of the process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, about: dict[str, Any]) -> None:
        """Take the lock or raise ConfigError naming the outbox that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a path under a file, a read-only or missing mount, no permission
            raise ConfigError(f"cannot use {self.path.parent} as the data directory: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = running(self.path.parent) or {}
            raise ConfigError(
                f"another edge-outbox is running on {self.path.parent} (pid {holder.get('pid', '?')}, "
                f"{holder.get('where', 'address unknown')}): stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), **about}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running(data_dir: Path) -> dict[str, Any] | None:
    """Who holds the lock ({"pid", "where", ...}), or None when no outbox runs on this data dir."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                about = json.loads(path.read_text() or "{}")
            except ValueError:
                about = {}
            return about if isinstance(about, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
