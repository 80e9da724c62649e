"""What an export holds in memory, against the size of the bundle it writes (a 64 MiB bundle on a small box).

It held about five copies at its peak: msgpack's growing buffer and its final copy, for the body and again
for the signed document, beside the batches kept until the end. Now about two and a half.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from edge_outbox import db, ops
from edge_outbox.bundle import export
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from tests.support.offline_site import enrolled_site


@pytest.mark.timeout(180)
def test_an_export_holds_under_three_copies_of_its_bundle(tmp_path: Path) -> None:
    site = enrolled_site(tmp_path)
    conn = db.connect(site)
    try:
        now = time.time_ns() // 1_000_000
        body = b'{"to": "ops@example.com", "subject": "s", "text": "' + b"x" * 1000 + b'"}'
        rows = [Admitted(f"bulk-{i:06d}", "hvac-ui", "email.send", body, 0, now, None, True) for i in range(8000)]
        ops.commit_intakes(conn, rows, QueueLimits(), now)
        del rows
        tracemalloc.start()
        try:
            done = export(conn, site, tmp_path / "b.bundle", max_bytes=64 << 20, now=now, new_id=lambda: "b-1")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        conn.close()
    assert done.intents == 8000 and done.bytes > 8_000_000
    assert peak < 3 * done.bytes, f"peak {peak:,} bytes for a bundle of {done.bytes:,}"
