"""Fill the disk under a live outbox: acknowledgements stop, nothing is lost, and it recovers."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import disk
from tests.support.edge import Client, OutboxProcess, email, stored_ids
from tests.support.net import free_port, wait_until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with disk.small_disk(tmp_path / "disk") as mount_point:
        yield mount_point


@pytest.mark.timeout(240)
def test_full_disk_holds_acks_and_loses_nothing(small_disk: Path) -> None:
    data_dir = small_disk / "data"
    with OutboxProcess(data_dir, free_port()) as outbox:
        app = Client(outbox.port, "filler-app", inflight=50).connect()
        app.publish("outbox/disk/email.send", email("before"), name="before")
        wait_until(lambda: app.acked == {"before"}, what="first intent")
        filler = disk.fill(small_disk)
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
