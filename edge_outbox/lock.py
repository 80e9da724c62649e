"""One running outbox per data dir: a lock held for the life of `edge-outbox run`.

Two outboxes on one database would both forward the same intents and apply each other's acks; the
first one then looked connected while sending nothing. The lock is an advisory `flock` on
DATA_DIR/outbox.lock, released by the kernel when the process ends however it ends (SIGKILL too), so
a stale lock never blocks a restart. The file says who holds it, for the refusal message and for
ops commands that want to know whether an outbox is running.

flock has no way to ask whether a lock is held without taking one, so `running()` takes a shared lock
for an instant, and a `run` starting at that instant found the lock taken. `acquire` therefore tells
the two apart: when it cannot take the lock but can share it, only such testers hold it (an outbox
holds it exclusively), and it tries again for up to TESTER_WAIT_S; an outbox that holds it is
refused at once, as before. (The other way, a tester that takes no lock, does not exist for flock:
F_GETLK sees only POSIX locks, and /proc/locks is Linux's and names no file.)

The holder also records there what it knows live (`record`: the link, intake, the attached broker), for
`edge-outbox status`. Not in the database: on a full disk (or with its write lock held elsewhere) the outbox
could not commit that record, so status read the last one written, saw intake working and exited 0 while
the outbox held every acknowledgement. The file's space is allocated when the lock is taken and each record
is written over it in place, so recording needs no new block of the disk (and no fsync: a record is about
a running process, and the lock says whether one runs).

The running outbox's records carry the time they were written (BEAT_KEY), one at least every
health.BEAT_EVERY_S, changed or not: the lock says that a process runs, not that it works, and an outbox whose
event loop hung (a blocking call) kept its lock, and status trusted its last record as current.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from edge_outbox.errors import ConfigError

LOCK_NAME = "outbox.lock"
TESTER_WAIT_S = 2.0  # a tester holds its shared lock for microseconds; this is for a host under load
RECORD_BYTES = 16384  # the file's allocated size: who holds the lock and what it records, space-padded
# What the running outbox records (`record`), for `edge-outbox status` and `edge-outbox flush`:
LINK_KEY = "link"  # the link to the bridge (edge_outbox.forward_wire.LinkSnapshot)
INTAKE_KEY = "intake"  # held publishes (full queue or disk): edge_outbox.intake.IntakeHealth
MAX_OFFLINE_KEY = "max_offline_s"  # the running outbox's --max-offline, by which its /healthz judges the link
ATTACH_KEY = "attach"  # attach mode: since when the broker connection is down (null: attached)
# The running outbox's heartbeat (wall ms), which edge_outbox.health judges; a holder that writes none (`flush`
# with no outbox running) is not judged by it.
BEAT_KEY = "beat_ms"
_READ_TRIES = 3  # a read that met a record half written reads again


class DataDirLock:
    """Held from `acquire()` until `release()` or the end of the process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None
        self._about: dict[str, Any] = {}

    def acquire(self, about: dict[str, Any]) -> None:
        """Take the lock or raise ConfigError naming the outbox that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a path under a file, a read-only or missing mount, no permission
            raise ConfigError(f"cannot use {self.path.parent} as the data directory: {exc.strerror}") from None
        if not _take(fd):
            os.close(fd)
            holder = running(self.path.parent) or {}
            raise ConfigError(
                f"another edge-outbox is running on {self.path.parent} (pid {holder.get('pid', '?')}, "
                f"{holder.get('where', 'address unknown')}): stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        self._fd, self._about = fd, {"pid": os.getpid(), **about}
        # Allocated now, while the disk (most likely) has room, so that every record later is written in place.
        with contextlib.suppress(OSError):  # a full disk already, or a file system that cannot: records may fail
            os.posix_fallocate(fd, 0, RECORD_BYTES)
        self.record({})

    def record(self, live: dict[str, Any]) -> bool:
        """Write who holds the lock and `live` (JSON values) over the file's record; False when it cannot."""
        if self._fd is None:
            return False
        text = json.dumps({**self._about, **live}).encode()
        if len(text) > RECORD_BYTES:
            beat = {k: v for k, v in live.items() if k == BEAT_KEY}
            text = json.dumps({**self._about, "record": "too large", **beat}).encode()
        try:
            os.pwrite(self._fd, text.ljust(RECORD_BYTES), 0)
        except OSError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _take(fd: int) -> bool:
    """Take the lock exclusively; False when an outbox holds it, or testers kept it for TESTER_WAIT_S."""
    deadline = time.monotonic() + TESTER_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        try:  # shared: only testers hold it (`running()`); exclusive: an outbox does
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


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
            return _read_record(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_record(fd: int) -> dict[str, Any]:
    """The holder's record ({} when it cannot be read: a record half written each time, an old format)."""
    for _ in range(_READ_TRIES):
        try:
            about = json.loads(os.pread(fd, RECORD_BYTES, 0).strip(b" \0") or b"{}")
        except (ValueError, OSError):
            continue
        return about if isinstance(about, dict) else {}
    return {}
