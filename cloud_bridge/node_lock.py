"""One running node per SQLite data directory: a lock `cloud-bridge run` holds for its life.

The SQLite store belongs to one process: at start its executor puts every row left `running` back in the
queue (`SqliteLedger.recover`), since on a single node those can only be a crashed run's. A second node
started on the same directory (other ports, or another container on the same volume) did that to the rows
the first was running, and ran them again: an email sent twice. The lock is an advisory `flock` on
DATA_DIR/bridge.lock, released by the kernel however the process ends (SIGKILL too), so a stale lock never
blocks a restart. The ops commands (`devices`, `intents`, `import`, ...) do not take it: they may run beside
a node. Nodes on PostgreSQL share their store by design and take none; each writes the store's address
(never its password) into DATA_DIR/store instead, so that an operator's command given that data dir alone is
told where the devices are rather than make a SQLite store there that no node reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from cloud_bridge.errors import ConfigError

LOCK_NAME = "bridge.lock"
STORE_NAME = "store"  # a node on a shared store: its address, for the operators' commands on the data dir


class NodeLock:
    """Held from `acquire()` until `release()` or the end of the process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, node_id: str) -> None:
        """Take the lock, or ConfigError naming the node that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.path.parent} as the data directory: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"another bridge node runs on {self.path.parent} ({holder}): its SQLite store is that node's alone;"
                " stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "node": node_id}).encode())
        self._fd = fd
        with contextlib.suppress(OSError):  # the data dir's store is its SQLite files now, not a shared one
            (self.path.parent / STORE_NAME).unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> str:
    try:
        about = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "pid unknown"
    if not isinstance(about, dict):
        return "pid unknown"
    return f"node {about.get('node', '?')}, pid {about.get('pid', '?')}"


def mark_shared_store(data_dir: Path, address: str) -> None:
    """Record that the node of `data_dir` runs on the shared store at `address` (a URL without password)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / STORE_NAME).write_text(address + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot use {data_dir} as the data directory: {exc.strerror}") from None


def refuse_other_store(data_dir: Path) -> None:
    """ConfigError when a node of `data_dir` runs on a shared store: an operator's command given the data dir alone
    made a SQLite store there, and an enrollment code no node knew (the device was refused: `code unknown`)."""
    try:
        address = (data_dir / STORE_NAME).read_text().strip()
    except OSError:
        return
    raise ConfigError(
        f"the bridge nodes of {data_dir} run on {address}, not on SQLite files there: give this command the nodes'"
        " --config (or --store)"
    )
