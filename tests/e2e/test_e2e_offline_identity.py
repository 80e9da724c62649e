"""An offline site's identity on its real CLIs and a real bridge: what an export that fails leaves marked,
a revocation that holds in every mode and is the old device's only, and intents sent under an identity
the site no longer has."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_outbox import db, ops
from edge_outbox.identity import key_file
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from tests.support.edge import cli, cli_json
from tests.support.sneakernet import cut_off, export, imported
from tests.support.stack import APP, Stack, intent


def _store(edge_dir: Path, *intent_ids: str) -> None:
    """Intents as the intake commits them (no outbox needs to run for an export)."""
    conn = db.connect(edge_dir)
    try:
        now = time.time_ns() // 1_000_000
        for intent_id in intent_ids:
            raw = json.dumps(intent(intent_id)).encode()
            ops.commit_intake(conn, Admitted(intent_id, APP, "email.send", raw, 0, now, None, True), QueueLimits(), now)
    finally:
        conn.close()


def _one_line_error(result: object, text: str) -> None:
    assert getattr(result, "returncode", None) == 1, result
    stderr: str = getattr(result, "stderr", "")
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]  # after export's progress lines
    assert last.startswith("Error: ") and text in last, stderr


@pytest.mark.timeout(120)
def test_an_export_that_writes_no_bundle_marks_nothing_sent(stack: Stack, tmp_path: Path) -> None:
    """A stick that is not mounted, or a device key that cannot sign: no bundle, so nothing may count as sent
    (before, the intents were marked sent first and could no longer be cancelled; the bad key was a traceback)."""
    cut_off(stack.edge_dir)
    _store(stack.edge_dir, "stick-1", "stick-2")

    unmounted = tmp_path / "not-mounted" / "site.bundle"
    _one_line_error(cli(stack.edge_dir, "export", "--out", str(unmounted)), "cannot write")
    assert cli_json(stack.edge_dir, "show", "stick-1")["sent"] == 0

    good_key = key_file(stack.edge_dir).read_bytes()
    key_file(stack.edge_dir).write_text("not a key\n")
    _one_line_error(cli(stack.edge_dir, "export", "--out", str(tmp_path / "site.bundle")), "device key")
    assert not (tmp_path / "site.bundle").exists()
    assert cli(stack.edge_dir, "cancel", "stick-1").returncode == 0  # never sent: it can still be cancelled

    key_file(stack.edge_dir).write_bytes(good_key)
    done = export(stack.edge_dir, tmp_path / "site.bundle")
    assert done["intents"] == 1
    assert cli_json(stack.edge_dir, "show", "stick-2")["sent"] == 1
    assert cli(stack.edge_dir, "cancel", "stick-2").returncode == 1  # in a bundle now: the bridge may have it
    assert imported(stack, tmp_path / "site.bundle", tmp_path / "site.receipt")["intents"] == 1
