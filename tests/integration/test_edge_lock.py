"""One outbox per data dir (edge_outbox.lock) on a real lock file: a status check never makes a starting
`run` fail, and an outbox that holds the lock is still refused."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from edge_outbox import lock
from edge_outbox.errors import ConfigError


def test_a_status_check_at_the_moment_run_starts_does_not_refuse_it(tmp_path: Path) -> None:
    (tmp_path / lock.LOCK_NAME).touch()
    # What `lock.running()` holds while it looks (`edge-outbox status`, a supervisor's check), held a
    # little longer than it ever is, and let go while `acquire` is within its TESTER_WAIT_S.
    tester = os.open(tmp_path / lock.LOCK_NAME, os.O_RDONLY)
    fcntl.flock(tester, fcntl.LOCK_SH | fcntl.LOCK_NB)
    release = threading.Timer(0.2, os.close, (tester,))
    release.start()
    outbox = lock.DataDirLock(tmp_path)
    try:
        outbox.acquire({"where": "127.0.0.1:1"})  # was: "another edge-outbox is running ... (pid ?, ...)"
        assert lock.running(tmp_path) == {"pid": os.getpid(), "where": "127.0.0.1:1"}
    finally:
        release.join()
        outbox.release()
    assert lock.running(tmp_path) is None


def test_an_outbox_holding_the_lock_is_refused_at_once(tmp_path: Path) -> None:
    first, second = lock.DataDirLock(tmp_path), lock.DataDirLock(tmp_path)
    first.acquire({"where": "127.0.0.1:2"})
    try:
        with pytest.raises(ConfigError, match=rf"another edge-outbox is running .* \(pid {os.getpid()}, 127.0.0.1:2\)"):
            second.acquire({"where": "127.0.0.1:3"})
    finally:
        first.release()
    second.acquire({"where": "127.0.0.1:3"})  # once it is gone
    second.release()
