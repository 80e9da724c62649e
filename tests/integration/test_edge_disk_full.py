"""Fill the disk under a live outbox: acknowledgements stop, nothing is lost, and it recovers."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.edge import Client, OutboxProcess, email, stored_ids
from tests.support.net import free_port, wait_until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        message = f"cannot mount a tmpfs here: {result.stderr.strip()}"
        if os.environ.get("OUTBOX_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.timeout(240)
def test_full_disk_holds_acks_and_loses_nothing(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    with OutboxProcess(data_dir, free_port()) as outbox:
        app = Client(outbox.port, "filler-app", inflight=50).connect()
        app.publish("outbox/disk/email.send", email("before"), name="before")
        wait_until(lambda: app.acked == {"before"}, what="first intent")
        filler = fill(small_disk)
        total = 2000
        body = "x" * 4000
        for n in range(total):
            app.publish("outbox/disk/email.send", email(f"d{n}", text=body), name=f"d{n}")
        wait_until(lambda: "intake paused" in outbox.log(), timeout=60, what="the outbox noticing")
        held = total + 1 - len(app.acked)
        assert held > 0, "every publish was acknowledged on a full disk"
        assert outbox.proc is not None and outbox.proc.poll() is None, "the outbox died on a full disk"
        filler.unlink()  # the operator frees space
        wait_until(lambda: len(app.acked) == total + 1, timeout=120, what="acks after space was freed")
        app.close()
        stored = stored_ids(data_dir)
        assert app.acked <= stored.keys()
        assert len(stored) == total + 1
        log = outbox.log()
        assert "intake resumed" in log
        # Reported, not shouted: one error line per episode from intake and from the writer, no traceback.
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) <= 3, "\n".join(errors[:20])
        assert "Traceback" not in log, log[-3000:]
