"""With app logins, a session is its app's: another app cannot resume it by its client id, and a
session receives only what its app may subscribe to, however its subscriptions came to be."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from edge_outbox.apps_auth import hash_password
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import ConnackCode, Type
from tests.support.edge import Client, OutboxProcess, email
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, wait_until


def users_file(tmp_path: Path) -> Path:
    users = tmp_path / "users"
    users.write_text(f"appa:{hash_password('pa')}\nappb:{hash_password('pb')}\n")
    return users


def leave(client: RawClient) -> None:
    client.send(p.Bare(Type.DISCONNECT))
    assert client.closed_by_server()
    client.close()


def first_status_after(watcher: RawClient, port: int) -> p.Publish:
    """appa publishes an intent, then appb one: statuses go out in seq order, so the first one `watcher`
    receives is appa's if anything of appa's reaches it, else appb's."""
    for app, password in (("appa", b"pa"), ("appb", b"pb")):
        publisher = RawClient(port)
        assert publisher.connect(f"{app}-pub", username=app, password=password).code == 0
        publisher.publish(f"outbox/{app}/email.send", json.dumps(email(f"{app}-1")).encode(), qos=1)
        publisher.close()
    (message,) = watcher.messages(1)
    return message


def test_another_app_with_the_client_id_gets_a_new_session_not_the_apps(tmp_path: Path) -> None:
    with OutboxProcess(tmp_path / "data", free_port(), "--users", str(users_file(tmp_path))) as outbox:
        owner = RawClient(outbox.port)
        assert not owner.connect("shared-id", clean=False, username="appa", password=b"pa").session_present
        assert owner.subscribe("outbox/appa/status/#", 1) == (1,)
        leave(owner)

        other = RawClient(outbox.port)
        connack = other.connect("shared-id", clean=False, username="appb", password=b"pb")
        assert (connack.code, connack.session_present) == (0, False)
        assert other.subscribe("outbox/appb/status/#", 1) == (1,)
        assert first_status_after(other, outbox.port).topic == "outbox/appb/status/appb-1"
        leave(other)

        back = RawClient(outbox.port)  # the session is now appb's: appa does not get it back either
        assert not back.connect("shared-id", clean=False, username="appa", password=b"pa").session_present
        back.close()
    assert "its session was 'appa''s: that session is discarded" in outbox.log()


def test_a_subscription_kept_from_before_logins_delivers_nothing_the_app_may_not_read(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    with OutboxProcess(data, port) as outbox:  # no logins: a client may subscribe to anything
        before = RawClient(outbox.port)
        assert before.connect("b-watch", clean=False, username="appb").code == 0
        assert before.subscribe("outbox/appa/status/#", 1) == (1,)
        leave(before)
    with OutboxProcess(data, port, "--users", str(users_file(tmp_path))) as outbox:
        watcher = RawClient(outbox.port)
        assert watcher.connect("b-watch", clean=False, username="appb", password=b"pb").session_present
        assert watcher.subscribe("outbox/appb/status/#", 1) == (1,)
        assert first_status_after(watcher, outbox.port).topic == "outbox/appb/status/appb-1"
        watcher.close()


def test_a_users_file_that_names_no_app_lets_no_client_in(tmp_path: Path) -> None:
    """Every app taken out of the users file (or one not filled in yet) is no app may log in, not logins turned off:
    the outbox took any client, anonymous or not, as any app."""
    users = tmp_path / "users"
    users.write_text("# appa:... removed\n")
    data = tmp_path / "data"
    with OutboxProcess(data, free_port(), "--users", str(users)) as outbox:
        for username in (None, "appa"):
            client = Client(outbox.port, f"{username}-client", username=username, password="pa").connect()
            assert client.connect_result is not None and client.connect_result.is_failure, username
            client.close()
        raw = RawClient(outbox.port)
        assert raw.connect("anon").code == ConnackCode.NOT_AUTHORIZED
        raw.close()
    assert "the users file names no app: every local client is refused" in outbox.log()


def hash_password_cli(app: str, password: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "edge_outbox", "hash-password", "--app", app, "--password", password]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_hash_password_refuses_an_app_name_the_users_file_cannot_hold(tmp_path: Path) -> None:
    """It printed `hvac ui:scrypt$...`, and `run --users` then stopped on that line with `expected app:scrypt$...`,
    not saying the name was what was wrong."""
    for app in ("hvac ui", "", "a:b", "app/x", "+", "#"):
        made = hash_password_cli(app, "pa")
        assert (made.returncode, made.stdout) == (2, ""), app
        assert "app name" in made.stderr and "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}" in made.stderr, made.stderr
    made = hash_password_cli("hvac-ui", "pa")
    assert made.returncode == 0, made.stderr
    users = tmp_path / "users"
    users.write_text(made.stdout.replace("hvac-ui:", "hvac ui:"))  # a file written by hand says what is wrong too
    refused = OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)).start(wait=False)
    assert refused.proc is not None and refused.proc.wait(60) == 1
    assert f"{users}:1: app name 'hvac ui' must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}" in refused.log()
    users.write_text(made.stdout)
    with OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)) as outbox:
        client = RawClient(outbox.port)
        assert client.connect("hvac-1", username="hvac-ui", password=b"pa").code == 0
        client.close()


def test_a_reload_takes_the_users_file_again_and_ends_the_connections_of_apps_removed_or_changed(
    tmp_path: Path,
) -> None:
    """`systemctl reload` after editing the users file: an app taken out (or given a new password) is out now,
    its live connection too, where the file was read only at start and the removed app went on publishing."""
    users = users_file(tmp_path)
    with OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)) as outbox:
        removed, kept = RawClient(outbox.port), RawClient(outbox.port)
        assert removed.connect("a-1", username="appa", password=b"pa").code == 0
        assert kept.connect("b-1", username="appb", password=b"pb").code == 0
        appb_line = users.read_text().splitlines()[1]
        users.write_text(f"{appb_line}\nappc:{hash_password('pc')}\n")
        assert outbox.proc is not None
        outbox.proc.send_signal(signal.SIGHUP)
        assert removed.closed_by_server()
        removed.close()
        kept.publish("outbox/appb/email.send", json.dumps(email("b-after")).encode(), qos=1)  # PUBACK: it goes on
        kept.close()
        for app, password in (("appa", "pa"), ("appc", "pc")):
            client = Client(outbox.port, f"{app}-2", username=app, password=password).connect()
            assert client.connect_result is not None
            assert client.connect_result.is_failure == (app == "appa"), app
            client.close()
        users.write_text("appb pb\n")  # a file that does not read changes nothing
        outbox.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "users file not taken" in outbox.log(), 10, what="the refused reload")
        again = RawClient(outbox.port)
        assert again.connect("c-3", username="appc", password=b"pc").code == 0
        again.close()
    assert "reloaded the users file: 2 apps; closed 1 connection of apps removed or given another password" in (
        outbox.log()
    )


def test_run_refuses_a_users_file_in_attach_mode_where_no_app_logs_in_to_the_outbox(tmp_path: Path) -> None:
    """In attach mode apps publish to the site's broker, which logs them in: the users file was ignored without a
    word, and any client of that broker published as any app while the vendor took the apps for confined."""
    args = ("--attach", f"mqtt://127.0.0.1:{free_port()}", "--users", str(users_file(tmp_path)))
    with OutboxProcess(tmp_path / "data", free_port(), *args) as outbox:
        assert outbox.proc is not None and outbox.proc.wait(60) == 1
    assert "--users is for the outbox's own endpoint" in outbox.log()


def test_run_refuses_a_users_file_line_whose_hash_is_cut_short(tmp_path: Path) -> None:
    """A hash cut short in the copy (or with a `$` part eaten by the shell) started, and its app was refused at every
    login with nothing saying why: `login as 'appb' refused`, as for a wrong password."""
    good, cut = hash_password("pa"), hash_password("pb")
    for broken in (cut[:40], cut.replace("$8$", "$$"), cut[:-20] + "!!!!", "scrypt$"):
        users = tmp_path / "users"
        users.write_text(f"appa:{good}\nappb:{broken}\n")
        outbox = OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)).start(wait=False)
        try:
            assert outbox.proc is not None and outbox.proc.wait(60) == 1, broken
        finally:
            outbox.__exit__()
        assert f"{users}:2: the hash of app 'appb' is not one edge-outbox hash-password makes" in outbox.log()


def test_hash_password_refuses_an_empty_password(tmp_path: Path) -> None:
    """`--password "$APP_PASSWORD"` with the variable unset made a hash of the empty password, and any client that
    sent the app's name with an empty password logged in as it."""
    made = hash_password_cli("appa", "")
    assert (made.returncode, made.stdout) == (2, ""), made.stdout
    assert "the password is empty" in made.stderr, made.stderr
    users = tmp_path / "users"
    users.write_text(hash_password_cli("appa", "pa").stdout)
    with OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)) as outbox:
        guess = Client(outbox.port, "guess", username="appa", password="").connect()
        assert guess.connect_result is not None and guess.connect_result.is_failure
        guess.close()
