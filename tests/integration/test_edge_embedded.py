"""The outbox as users run it: a real process, paho clients, the ops CLI against the live database."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_outbox.apps_auth import hash_password
from tests.support.edge import Client, OutboxProcess, cli, cli_json, email, stored_ids
from tests.support.net import free_port, wait_until

BAD_INPUTS = [
    ("outbox/hvac/email.send", b"{not json", "bad_json"),
    ("outbox/hvac/fax.send", json.dumps(email()).encode(), "unknown_kind"),
    ("outbox/hvac/email.send", json.dumps({"to": "ops@example.com"}).encode(), "schema_violation"),
    ("outbox/hvac/email.send", json.dumps(email(text="x" * 300_000)).encode(), "too_large"),
    ("outbox/bad app!/email.send", json.dumps(email()).encode(), "bad_app"),
    ("outbox/hvac/email.send", json.dumps(email(id="no spaces allowed")).encode(), "bad_id"),
    ("outbox/hvac", json.dumps(email()).encode(), "bad_topic"),
    # JSON a stricter reader refuses: text that is not Unicode (it broke the schema check) and a number
    # past the float range (infinity); neither can be sent on to the bridge
    ("outbox/hvac/email.send", json.dumps(email(subject="\ud800")).encode(), "bad_json"),
    (
        "outbox/hvac/http.request",
        b'{"credential": "c", "method": "POST", "path": "/", "json": {"s": "\\udfff"}}',
        "bad_json",
    ),
    (
        "outbox/hvac/http.request",
        b'{"credential": "c", "method": "POST", "path": "/", "json": {"n": 1e400}}',
        "bad_json",
    ),
]


@pytest.fixture
def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    with OutboxProcess(tmp_path / "data", free_port()) as proc:
        yield proc


def test_intents_are_accepted_and_statuses_published(outbox: OutboxProcess) -> None:
    app = Client(outbox.port, "hvac-ui").connect()
    app.subscribe("outbox/hvac/status/#")
    app.publish("outbox/hvac/email.send", email("alarm-1", ttl=600), name="alarm-1")
    app.publish("outbox/hvac/sms.send", {"id": "sms-1", "to": "+4915112345678", "text": "Door open"}, name="sms-1")
    wait_until(lambda: app.acked == {"alarm-1", "sms-1"}, what="PUBACKs")
    wait_until(
        lambda: app.status_of("alarm-1") == ["accepted"] and app.status_of("sms-1") == ["accepted"],
        what="accepted statuses",
    )
    topic, status = next((t, s) for t, s in app.statuses if s["id"] == "alarm-1")
    assert topic == "outbox/hvac/status/alarm-1"
    assert set(status) == {"id", "kind", "state", "code", "detail", "at", "seq"}
    assert status["kind"] == "email.send"
    # a repeated id is not stored twice; the app hears the current state again
    app.publish("outbox/hvac/email.send", email("alarm-1", ttl=600), name="again")
    wait_until(lambda: app.status_of("alarm-1") == ["accepted", "accepted"], what="duplicate status")
    assert list(stored_ids(outbox.data_dir)).count("alarm-1") == 1
    app.close()


def test_every_kind_of_bad_input_is_rejected_with_its_reason_and_service_goes_on(outbox: OutboxProcess) -> None:
    app = Client(outbox.port, "tester").connect()
    app.subscribe("outbox/+/status/#")
    for n, (topic, body, _code) in enumerate(BAD_INPUTS):
        app.publish(topic, body, name=f"bad{n}")
    wait_until(lambda: len(app.acked) == len(BAD_INPUTS), what="PUBACKs for bad input")
    wait_until(lambda: len(app.statuses) >= len(BAD_INPUTS), what="rejected statuses")
    codes = sorted(s["code"] for _, s in app.statuses)
    assert codes == sorted(code for _, _, code in BAD_INPUTS)
    assert all(s["state"] == "rejected" and s["detail"] for _, s in app.statuses)
    # every one is kept for inspection, with its reason
    rejected = cli_json(outbox.data_dir, "ls", "--state", "rejected")
    assert sorted(r["code"] for r in rejected) == codes
    shown = cli_json(outbox.data_dir, "show", rejected[0]["id"])
    assert shown["detail"] and ("payload" in shown or "payload_text" in shown)
    # and the outbox still serves good input
    app.publish("outbox/hvac/email.send", email("after-bad"), name="after-bad")
    wait_until(lambda: "accepted" in app.status_of("after-bad"), what="good intent after bad ones")
    app.close()


def test_ops_commands_work_against_a_live_outbox(outbox: OutboxProcess) -> None:
    app = Client(outbox.port, "ops-app").connect()
    app.subscribe("outbox/ops/status/#")
    for n in range(3):
        app.publish("outbox/ops/email.send", email(f"o{n}"), name=f"o{n}")
    wait_until(lambda: len(app.acked) == 3, what="PUBACKs")
    status = cli_json(outbox.data_dir, "status")
    assert status["counts"]["accepted"] == 3
    assert status["pending"] == 3
    assert status["oldest_pending_age_s"] >= 0
    assert [r["id"] for r in cli_json(outbox.data_dir, "ls", "--app", "ops")] == ["o2", "o1", "o0"]
    assert len(cli_json(outbox.data_dir, "ls", "--limit", "1")) == 1
    cancelled = cli_json(outbox.data_dir, "cancel", "o1")
    assert cancelled["state"] == "cancelled"
    # the running outbox notices the change made by another process and tells the app
    wait_until(lambda: "cancelled" in app.status_of("o1"), what="cancelled status from the CLI")
    again = cli(outbox.data_dir, "cancel", "o1")
    assert again.returncode == 1
    assert again.stderr.startswith("Error: cannot cancel")
    assert "Traceback" not in again.stderr
    missing = cli(outbox.data_dir, "show", "nope")
    assert missing.returncode == 1
    assert "no intent with id 'nope'" in missing.stderr
    assert cli_json(outbox.data_dir, "show", "o2")["id"] == "o2"
    ambiguous = cli(outbox.data_dir, "show", "o")
    assert ambiguous.returncode == 1 and "start of several ids" in ambiguous.stderr
    shown = cli(outbox.data_dir, "show", "o0").stdout
    assert "None" not in shown and "sent_at: -" in shown and "created: 20" in shown
    not_retryable = cli(outbox.data_dir, "retry", "o0")
    assert not_retryable.returncode == 1
    assert "cannot retry an intent that is accepted" in not_retryable.stderr
    assert cli_json(outbox.data_dir, "purge", "--older-than", "0s", "--dry-run")["would_purge"] == 1
    unasked = cli(outbox.data_dir, "purge", "--older-than", "0s")  # no terminal to confirm on: nothing deleted
    assert unasked.returncode != 0 and "delete 1 final intent older" in unasked.stderr
    assert cli_json(outbox.data_dir, "status")["counts"]["cancelled"] == 1
    assert cli_json(outbox.data_dir, "purge", "--older-than", "0s", "--yes")["purged"] == 1
    assert cli_json(outbox.data_dir, "status")["counts"]["cancelled"] == 0
    human = cli(outbox.data_dir, "status")
    assert "accepted" in human.stdout
    assert "oldest pending" in human.stdout
    app.close()


def test_port_taken_gives_one_line_naming_the_flag_and_attach(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert "--listen" in error_lines[0]
    assert "--attach" in error_lines[0]


def test_app_logins_and_topic_limits(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"# apps\nhvac:{hash_password('s3cret')}\n")
    with OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)) as outbox:
        intruder = Client(outbox.port, "intruder", username="hvac", password="wrong").connect()
        assert intruder.connect_result.is_failure
        intruder.close()
        app = Client(outbox.port, "hvac-app", username="hvac", password="s3cret").connect()
        assert app.connected.is_set()
        app.subscribe("outbox/hvac/status/#")
        app.publish("outbox/hvac/email.send", email("mine"), name="mine")
        app.publish("outbox/other/email.send", email("theirs"), name="theirs")
        wait_until(lambda: len(app.statuses) >= 2, what="statuses")
        assert app.status_of("mine") == ["accepted"]
        refused = [s for _, s in app.statuses if s["code"] == "not_authorized"]
        assert len(refused) == 1
        assert "outbox/hvac/" in refused[0]["detail"]
        # On the id it published, in its own namespace, where it waits (the id was made up: it heard nothing).
        assert refused[0]["id"] == "theirs" and app.status_of("theirs") == ["rejected"]
        stored = stored_ids(outbox.data_dir)
        assert stored["mine"] == "accepted"
        assert stored["theirs"] == "rejected"  # a refusal of its own, never an intent of the other app
        app.close()


def test_every_command_has_help() -> None:
    from click.testing import CliRunner

    from edge_outbox.cli import main

    runner = CliRunner()
    missing = []
    for name, command in main.commands.items():
        if not command.help:
            missing.append(name)
        for param in command.params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False) and not param.help:
                missing.append(f"{name} {param.opts[0]}")
        assert runner.invoke(main, [name, "--help"]).exit_code == 0
    assert not missing, f"commands or options without help: {missing}"
    json_commands = {"status", "ls", "show", "retry", "cancel", "purge"}
    for name in json_commands:
        assert any(p.name == "as_json" for p in main.commands[name].params), f"{name} lacks --json"


def test_ls_never_cuts_an_id_and_show_takes_a_unique_prefix(outbox: OutboxProcess) -> None:
    app = Client(outbox.port, "narrow").connect()
    app.publish("outbox/a-rather-long-app-name/email.send", email(text="x" * 200), name="generated")
    wait_until(lambda: app.acked == {"generated"}, what="PUBACK")
    app.close()
    (row,) = cli_json(outbox.data_dir, "ls")
    full_id = row["id"]
    narrow = subprocess.run(
        [sys.executable, "-m", "edge_outbox", "ls", "--data-dir", str(outbox.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert full_id in narrow.stdout, narrow.stdout
    assert cli_json(outbox.data_dir, "show", full_id[:12])["id"] == full_id


def test_json_logs_name_the_app_intent_and_code(tmp_path: Path) -> None:
    with OutboxProcess(tmp_path / "data", free_port(), "--log-format", "json") as outbox:
        app = Client(outbox.port, "logger").connect()
        app.publish("outbox/hvac/fax.send", {"id": "fax-1"}, name="fax")
        wait_until(lambda: "fax-1" in outbox.log(), what="the rejection in the log")
        app.close()
    lines = [json.loads(line) for line in outbox.log().splitlines() if line.strip()]
    (rejection,) = [line for line in lines if line.get("intent_id") == "fax-1"]
    assert (rejection["app"], rejection["code"], rejection["level"]) == ("hvac", "unknown_kind", "warning")
