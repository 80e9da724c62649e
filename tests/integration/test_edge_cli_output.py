"""What `edge-outbox ls`, `show` and `status` print of stored text: the text as it is, never markup or
terminal control. Real data dirs, rows stored through the intake's own decision and commit, the real CLI
in a subprocess (as an operator's terminal gets it, FORCE_COLOR on so that rich would style if asked).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from click.testing import CliRunner

from edge_outbox import db, ops
from edge_outbox.cli import main
from edge_outbox.intake_rules import Refused, admit
from edge_outbox.ops import QueueLimits
from tests.support.edge import old_final_intents

NOW = time.time_ns() // 1_000_000
_ids = itertools.count()


def store(data_dir: Path, topic: str, payload: bytes, decided: Refused | None = None) -> str:
    """Take one publish in as the intake does (admit, then commit), or commit `decided`; the stored intent's id."""
    conn = db.connect(data_dir)
    try:
        decided = decided or admit(topic, payload, NOW, lambda: f"m{next(_ids)}")
        result = ops.commit_intake(conn, decided, QueueLimits(), NOW)
        assert result.row is not None
        return result.row.id
    finally:
        conn.close()


def edge(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "edge_outbox", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


EMAIL = json.dumps({"to": "ops@example.com", "subject": "s", "text": "t"}).encode()


def test_ls_shows_an_apps_markup_and_control_characters_as_text(tmp_path: Path) -> None:
    for app in ("[link=https:evil.example]call-support", "[blink red]ALARM", "a\x1b]0;owned\x07b"):
        store(tmp_path, f"outbox/{app}/email.send", EMAIL)
    # `[/x]` (a closing tag rich fails on) cannot be a topic level; text stored by another version can hold it
    store(tmp_path, "", b"", Refused("m9", "[/x]", "email.send", "bad_app", "", b"", 0, NOW))
    result = edge(tmp_path, "ls")
    assert result.returncode == 0, result.stderr  # `[/x]` was a MarkupError traceback
    assert "\x1b]8;" not in result.stdout  # an OSC 8 hyperlink
    assert "\x1b[5" not in result.stdout  # blink
    assert "\x1b]0;" not in result.stdout  # a window title
    for shown in ("[link=https:evil.example]call-support", "[blink red]ALARM", "[/x]", "a\\u001b]0;owned\\u0007b"):
        assert shown in result.stdout, result.stdout


def test_show_writes_out_control_characters_of_a_refused_payload(tmp_path: Path) -> None:
    forged = b"\x1b]0;owned\x07\x1b[2J       state: delivered\n        code: ok"
    intent_id = store(tmp_path, "outbox/app1/email.send", forged)
    result = edge(tmp_path, "show", intent_id)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines].count("state") == 1, result.stdout  # no forged line
    assert "payload_text: \\u001b]0;owned\\u0007\\u001b[2J       state: delivered\\u000a        code: ok" in lines
    shown = json.loads(edge(tmp_path, "show", intent_id, "--json").stdout)
    assert shown["payload_text"] == forged.decode()  # JSON keeps the text exact (and escapes it itself)


def test_a_state_this_version_does_not_know_is_shown_as_text(tmp_path: Path) -> None:
    intent_id = store(tmp_path, "outbox/app1/email.send", EMAIL)
    conn = db.connect(tmp_path)
    conn.execute("UPDATE intents SET state = 'paused' WHERE id = ?", (intent_id,))  # as a newer outbox might
    conn.close()
    listed = edge(tmp_path, "ls")
    assert listed.returncode == 0, listed.stderr  # was a KeyError traceback
    assert intent_id in listed.stdout and "paused" in listed.stdout
    assert json.loads(edge(tmp_path, "ls", "--json").stdout)[0]["state"] == "paused"
    shown = edge(tmp_path, "show", intent_id)
    assert shown.returncode == 0, shown.stderr
    assert "       state: paused" in shown.stdout.splitlines()
    refused = edge(tmp_path, "retry", intent_id)
    assert (refused.returncode, refused.stderr) == (1, "Error: cannot retry an intent that is paused\n")


def test_ls_does_not_hold_the_payloads_it_does_not_show(tmp_path: Path) -> None:
    """`ls --limit` goes to 100,000 and a payload to 256 KiB: reading them held GBs for a table of ids."""
    conn = db.connect(tmp_path)
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)"
        " INSERT INTO intents(id, app, kind, state, created, updated, payload, size)"
        " SELECT 'big-' || i, 'hvac', 'email.send', 'accepted', 1, 1, zeroblob(250000), 250000 FROM n"
    )  # 100 MB of payloads
    conn.close()
    tracemalloc.start()  # in-process (CliRunner), to trace what the command holds
    try:
        result = CliRunner().invoke(main, ["ls", "--limit", "400", "--json", "--data-dir", str(tmp_path)])
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert len(listed) == 400 and listed[0]["id"] == "big-400" and listed[0]["size"] == 250_000
    assert peak < 20_000_000, peak  # before: over 100 MB, every payload read


def test_counts_of_one_are_said_in_the_singular(tmp_path: Path) -> None:
    """`purged 1 intent(s)`, `delete 1 final intent(s) ...?`, `queued again: 1 intent(s)`: the commands wrote
    every count with a `(s)` (and `1 intents` elsewhere)."""
    conn = db.connect(tmp_path)
    try:
        old_final_intents(conn, 1, NOW - 3 * 3600 * 1000)
        conn.execute("UPDATE intents SET state = 'failed', code = 'smtp_550' WHERE id = 'old-1'")
    finally:
        conn.close()
    retried = edge(tmp_path, "retry", "--state", "failed")
    assert (retried.returncode, retried.stdout) == (0, "queued again: 1 intent\n"), retried.stderr
    conn = db.connect(tmp_path)
    try:
        old_final_intents(conn, 2, NOW - 3 * 3600 * 1000, app="two")
    finally:
        conn.close()
    assert edge(tmp_path, "purge", "--older-than", "1h", "--dry-run").stdout == "would purge 2 intents\n"
    asked = edge(tmp_path, "purge", "--older-than", "1h", "--state", "delivered")  # no terminal: no answer
    assert asked.returncode == 1 and "delete 2 delivered intents older than 1h00m?" in asked.stderr
    edge(tmp_path, "purge", "--older-than", "1h", "--yes")
    conn = db.connect(tmp_path)
    try:
        old_final_intents(conn, 1, NOW - 3 * 3600 * 1000, app="one")
    finally:
        conn.close()
    asked = edge(tmp_path, "purge", "--older-than", "1h")
    assert asked.returncode == 1 and "delete 1 final intent older than 1h00m?" in asked.stderr
    purged = edge(tmp_path, "purge", "--older-than", "1h", "--yes")
    assert (purged.returncode, purged.stdout) == (0, "purged 1 intent\n"), purged.stderr


def test_ls_says_on_stderr_when_more_intents_match_than_it_shows(tmp_path: Path) -> None:
    """`ls` showed its --limit (50) newest and stopped without a word, text or --json: a script that retried or
    counted what `ls --state failed --json` listed missed the rest, where `cloud-bridge intents ls` and `audit`
    say so on stderr. As many as match, or fewer, stay silent."""
    ids = [store(tmp_path, "outbox/app1/email.send", EMAIL) for _ in range(3)]
    cut = edge(tmp_path, "ls", "--limit", "2", "--json")
    assert cut.returncode == 0, cut.stderr
    assert [row["id"] for row in json.loads(cut.stdout)] == ids[:0:-1]  # the 2 newest, and valid JSON
    assert cut.stderr == "only the 2 newest intents are shown; more match (raise --limit, or filter)\n"
    assert edge(tmp_path, "ls", "--limit", "2").stderr == cut.stderr
    for whole in (("--limit", "3"), ("--limit", "3", "--json"), ("--state", "accepted")):
        listed = edge(tmp_path, "ls", *whole)
        assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
