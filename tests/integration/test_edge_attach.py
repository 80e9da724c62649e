"""Attach mode against a real Mosquitto on a private loopback port."""

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trustme

from edge_outbox import attach
from edge_outbox.attach import AttachedClient
from edge_outbox.attach_peers import PEER_TOPIC
from edge_outbox.intake import Intake
from edge_outbox.settings import AttachTarget
from edge_outbox.status import StatusFeed
from tests.support.attach import assert_refused_at_start, attached, site_mosquitto
from tests.support.edge import Client, OutboxProcess, cli, email, stored_ids
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, until, wait_for_port, wait_until
from tests.support.services import require_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    with site_mosquitto(tmp_path) as port:
        yield port


def test_mosquitto_pub_intent_is_committed_and_status_published(tmp_path: Path, mosquitto: int) -> None:
    pub = require_binary("mosquitto_pub")
    app = Client(mosquitto, "status-watcher").connect()
    app.subscribe("outbox/hvac/status/#")
    with attached(tmp_path, mosquitto) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        subprocess.run(
            [
                pub,
                "-h",
                "127.0.0.1",
                "-p",
                str(mosquitto),
                "-q",
                "1",
                "-t",
                "outbox/hvac/email.send",
                "-m",
                '{"id": "from-cli", "to": "ops@example.com", "subject": "Hi", "text": "t"}',
            ],
            check=True,
            timeout=30,
        )
        subprocess.run(
            [pub, "-h", "127.0.0.1", "-p", str(mosquitto), "-q", "1", "-t", "outbox/hvac/email.send", "-m", "{broken"],
            check=True,
            timeout=30,
        )
        wait_until(lambda: app.status_of("from-cli") == ["accepted"], what="accepted status via mosquitto")
        wait_until(lambda: any(s["code"] == "bad_json" for _, s in app.statuses), what="rejected status")
        assert stored_ids(outbox.data_dir)["from-cli"] == "accepted"
    app.close()


def test_a_retained_intent_is_taken_once_not_again_on_every_subscribe(tmp_path: Path, mosquitto: int) -> None:
    """The broker sends its retained copy (RETAIN=1) on every SUBSCRIBE, one per connection of the outbox:
    each was taken as a new intent (no id: a new one each time), so the email went out on every restart."""
    outbox = attached(tmp_path, mosquitto).start()
    app = RawClient(mosquitto)
    try:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        assert app.connect("retaining-app").code == 0
        app.publish("outbox/hvac/email.send", json.dumps(email()).encode(), 1, retain=True)
        wait_until(lambda: len(stored_ids(outbox.data_dir)) == 1, what="the intent as published (RETAIN=0)")
        outbox.stop()
        outbox = attached(tmp_path, mosquitto).start()  # subscribes again: the broker replays its retained copy
        wait_until(lambda: outbox.log().count("attached; subscribed") == 2, what="outbox attached again")
        app.publish("outbox/hvac/email.send", json.dumps(email("after")).encode(), 1)
        # Intents are taken in the order the broker sends them: the retained copy follows the SUBACK at once.
        wait_until(lambda: "after" in stored_ids(outbox.data_dir), what="the intent after the retained copy")
        assert len(stored_ids(outbox.data_dir)) == 2
        assert outbox.log().count("holds a retained message on outbox/hvac/email.send") == 1
    finally:
        app.close()
        outbox.stop()


def test_clearing_a_retained_intent_as_the_docs_advise_stores_nothing(tmp_path: Path, mosquitto: int) -> None:
    """The empty retained publish that clears a retained message reaches the outbox (with RETAIN=0, as any message
    on its subscription): it was taken as an intent, and stored as rejected (bad_json) with a status for no one."""
    app = RawClient(mosquitto)
    with attached(tmp_path, mosquitto) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        assert app.connect("retaining-app").code == 0
        app.publish("outbox/hvac/email.send", json.dumps(email("kept")).encode(), 1, retain=True)
        app.publish("outbox/hvac/email.send", b"", 1, retain=True)  # mosquitto_pub -r -n -t outbox/hvac/email.send
        app.publish("outbox/hvac/email.send", json.dumps(email("after-clear")).encode(), 1)
        wait_until(lambda: "after-clear" in stored_ids(outbox.data_dir), what="the intent after the clear")
        assert stored_ids(outbox.data_dir) == {"kept": "accepted", "after-clear": "accepted"}
        assert "rejected input" not in outbox.log()
        assert "an empty message on outbox/hvac/email.send (how a retained message is cleared)" in outbox.log()
    app.close()


def test_a_replay_request_through_the_broker_publishes_the_apps_statuses_again(tmp_path: Path, mosquitto: int) -> None:
    """It was taken as an intent of the unknown kind `replay`: the app had a rejection, not its statuses."""
    app = Client(mosquitto, "replaying-app").connect()
    app.subscribe("outbox/hvac/status/#")
    with attached(tmp_path, mosquitto) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        for name in ("r1", "r2", "r3"):
            app.publish("outbox/hvac/email.send", email(name))
        app.publish("outbox/other/email.send", email("not-hvac"))
        wait_until(lambda: app.ids_with("accepted") == {"r1", "r2", "r3"}, what="the statuses, once")
        first_seq = next(s["seq"] for _topic, s in app.statuses if s["id"] == "r1")
        app.publish("outbox/hvac/replay", {"after": first_seq})
        app.publish("outbox/hvac/replay", b"not a request")
        wait_until(lambda: [s["id"] for _t, s in app.statuses] == ["r1", "r2", "r3", "r2", "r3"], what="replayed")
        wait_until(lambda: "a replay request for hvac is" in outbox.log(), what="the bad request named")
        wait_until(lambda: "the statuses of hvac were asked for again: 2 published" in outbox.log(), what="logged")
        assert sorted(stored_ids(outbox.data_dir)) == ["not-hvac", "r1", "r2", "r3"]  # no intent made of a request
    app.close()


def test_a_subscription_granted_at_qos_0_only_is_named_as_losing_intents(tmp_path: Path) -> None:
    """Mosquitto's max_qos 0 grants outbox/+/+ at QoS 0: nothing is queued for the outbox while it is away, and
    the outbox logged "attached" as if all were well."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "qos0.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nmax_qos 0\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        with attached(tmp_path, port) as outbox:
            wait_until(lambda: "granted outbox/+/+ at QoS 0 only" in outbox.log(), what="the QoS 0 grant named")
    finally:
        broker.terminate()
        broker.wait(10)


def test_a_message_too_large_to_take_is_refused_and_the_ones_behind_it_are_taken(
    tmp_path: Path, mosquitto: int
) -> None:
    """Mosquitto relays messages of any size: one over 16 MiB closed the connection, came again on the next,
    for ever, and nothing behind it was taken. Now its head is read, the rest dropped, and it is refused."""
    app = Client(mosquitto, "careless-app").connect()
    app.subscribe("outbox/hvac/status/#")
    with attached(tmp_path, mosquitto) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        huge = b'{"id": "huge", "text": "' + b"x" * (17 << 20) + b'"}'
        app.publish("outbox/hvac/email.send", huge, name="huge")
        app.publish("outbox/hvac/email.send", email("after-huge"), name="after")
        wait_until(lambda: app.status_of("after-huge") == ["accepted"], what="the intent behind the huge one")
        (rejected,) = [s for _topic, s in app.statuses if s["state"] == "rejected"]
        assert rejected["code"] == "too_large"
        assert f"payload of {len(huge)} bytes" in rejected["detail"]
        assert "connection lost" not in outbox.log()
    app.close()


@pytest.mark.timeout(300)
def test_outbox_acks_the_broker_only_after_commit_so_sigkill_loses_nothing(tmp_path: Path, mosquitto: int) -> None:
    """Everything Mosquitto acknowledged to the app ends up committed, across two SIGKILLs of the outbox."""
    outbox = attached(tmp_path, mosquitto).start()
    wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
    app = Client(mosquitto, "busy-app").connect()
    total = 3000
    for n in range(total):
        app.publish("outbox/busy/email.send", email(f"m{n}"), name=f"m{n}")
        if n in (800, 1900):
            outbox.kill()  # mid-stream; Mosquitto keeps the rest for the persistent session
            outbox = attached(tmp_path, mosquitto).start()
    wait_until(lambda: len(app.acked) == total, timeout=60, what="broker PUBACKs")
    wait_until(
        lambda: len(stored_ids(outbox.data_dir)) >= total,
        timeout=120,
        interval=0.5,
        what="all intents committed after restarts",
    )
    stored = stored_ids(outbox.data_dir)
    assert app.acked <= stored.keys()
    assert len(stored) == total
    outbox.stop()
    app.close()


def test_attach_to_nothing_keeps_trying_and_attaches_when_the_broker_appears(tmp_path: Path) -> None:
    binary = require_binary("mosquitto")
    port = free_port()
    outbox = attached(tmp_path, port).start()
    time.sleep(1.5)
    assert outbox.proc is not None and outbox.proc.poll() is None, outbox.log()
    conf = tmp_path / "late.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: "attached; subscribed" in outbox.log(), timeout=40, what="late attach")
    finally:
        outbox.stop()
        broker.terminate()
        broker.wait(10)


def test_an_outbox_not_attached_to_its_broker_is_unhealthy(tmp_path: Path) -> None:
    """Every intent comes through the site broker: /healthz and `edge-outbox status` said ok while none could."""
    port, metrics = free_port(), free_port()
    outbox = OutboxProcess(
        tmp_path / "data", port, f"--attach=mqtt://127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}",
        "--max-offline", "1s",
    ).start()  # fmt: skip
    broker: subprocess.Popen[bytes] | None = None
    try:
        wait_for_port(metrics)

        def health() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=10) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        wait_until(lambda: health()[0] == 503, what="unhealthy while no broker answers")
        assert "not attached to the site broker for" in health()[1]
        wait_until(
            lambda: cli(outbox.data_dir, "status", "--max-offline", "1s").returncode == 1, what="status says so too"
        )
        assert "not attached to the site broker" in cli(outbox.data_dir, "status", "--max-offline", "1s").stdout
        conf = tmp_path / "late.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(
            [require_binary("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: health()[0] == 200, timeout=60, what="healthy once attached")
        wait_until(lambda: cli(outbox.data_dir, "status", "--max-offline", "1s").returncode == 0, what="status healthy")
    finally:
        outbox.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def start_mosquitto(binary: str, conf: Path, port: int) -> subprocess.Popen[bytes]:
    """Mosquitto started with `conf`, once it listens on `port`."""
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


def test_outbox_attaches_again_after_the_broker_restarts(tmp_path: Path) -> None:
    """Mosquitto goes away under an attached outbox and comes back: intents flow again, statuses too."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "restart.conf"
    store = tmp_path / "mosquitto-data"
    store.mkdir()
    # Persistence on: the outbox's session (its subscription) survives the restart, as on a site. As root, Mosquitto
    # switches to its own user, which cannot write pytest's private directory: `user root` keeps it root (it could
    # not save its database, and the session was lost: seen once the outbox named a lost session).
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {store}/\n"
        "max_queued_messages 0\nuser root\n"
    )

    first = start_mosquitto(binary, conf, port)
    with attached(tmp_path, port) as outbox:
        wait_until(lambda: outbox.log().count("attached; subscribed") == 1, what="outbox attached")
        first.terminate()
        first.wait(10)
        wait_until(lambda: "attach broker connection lost" in outbox.log(), what="loss noticed")
        second = start_mosquitto(binary, conf, port)
        try:
            wait_until(lambda: outbox.log().count("attached; subscribed") == 2, timeout=60, what="attached again")
            app = Client(port, "after-restart").connect()
            app.subscribe("outbox/hvac/status/#")
            app.publish("outbox/hvac/email.send", email("after"), name="after")
            wait_until(lambda: app.status_of("after") == ["accepted"], what="accepted status after the restart")
            assert stored_ids(outbox.data_dir)["after"] == "accepted"
            assert "had no session" not in outbox.log()  # the broker kept it
            app.close()
        finally:
            second.terminate()
            second.wait(10)


def test_a_broker_that_lost_the_outboxs_session_is_named(tmp_path: Path) -> None:
    """Mosquitto restarted without persistence keeps nothing for the outbox meanwhile; the outbox said only
    'attached' again, and nothing told the operator that intents published in the gap were lost."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "forgetful.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")

    first = start_mosquitto(binary, conf, port)
    with attached(tmp_path, port) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        assert "had no session" not in outbox.log()  # the first attach to a new broker: nothing to miss
        first.terminate()
        first.wait(10)
        second = start_mosquitto(binary, conf, port)
        try:
            wait_until(lambda: outbox.log().count("attached; subscribed") == 2, timeout=60, what="attached again")
            assert "the attach broker had no session for outbox-under-test" in outbox.log()
        finally:
            second.terminate()
            second.wait(10)


@pytest.fixture
def tls_mosquitto(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[tuple[int, int]]:
    """Mosquitto with a plain listener for the test's apps and a TLS one (a trustme certificate) for the outbox."""
    binary = require_binary("mosquitto")
    plain, tls = free_port(), free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(
        f"listener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {server_cert_files['ca']}\n"
        f"certfile {server_cert_files['cert']}\nkeyfile {server_cert_files['key']}\n"
        # As root, Mosquitto switches to its own user before it loads the certificates, which pytest's private
        # temporary directory keeps from that user: `user root` keeps it root (ignored when not started as root).
        "allow_anonymous true\npersistence false\nmax_queued_messages 0\nuser root\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(plain)
        wait_for_port(tls)
        yield plain, tls
    finally:
        proc.terminate()
        proc.wait(10)


def test_attach_over_tls_verifies_the_broker_and_takes_intents(
    tmp_path: Path, tls_mosquitto: tuple[int, int], server_cert_files: dict[str, Path]
) -> None:
    plain, tls = tls_mosquitto
    app = Client(plain, "tls-app").connect()
    app.subscribe("outbox/hvac/status/#")
    attach = (f"--attach=mqtts://127.0.0.1:{tls}", "--attach-ca", str(server_cert_files["ca"]))
    with OutboxProcess(tmp_path / "data", tls, *attach) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached over TLS")
        assert f"attaching to mqtts://127.0.0.1:{tls}" in outbox.log()
        app.publish("outbox/hvac/email.send", email("over-tls"), name="over-tls")
        wait_until(lambda: app.status_of("over-tls") == ["accepted"], what="accepted status over TLS")
        assert stored_ids(outbox.data_dir)["over-tls"] == "accepted"
    app.close()


def test_attach_over_tls_refuses_a_broker_its_ca_did_not_sign(tmp_path: Path, tls_mosquitto: tuple[int, int]) -> None:
    plain, tls = tls_mosquitto
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    app = Client(plain, "tls-app").connect()
    with OutboxProcess(
        tmp_path / "data", tls, f"--attach=mqtts://127.0.0.1:{tls}", "--attach-ca", str(other_ca)
    ) as outbox:
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in outbox.log(), what="the certificate refused")
        app.publish("outbox/hvac/email.send", email("not-taken"), name="not-taken")
        wait_until(lambda: "not-taken" in app.acked, what="Mosquitto's PUBACK")
        refused = f"TLS with the attach broker mqtts://127.0.0.1:{tls} failed"
        wait_until(lambda: outbox.log().count(refused) >= 2, what="the next attempt refused too")
        assert "attached; subscribed" not in outbox.log()
        assert "not-taken" not in stored_ids(outbox.data_dir)
    app.close()


def test_attach_tls_settings_that_cannot_work_stop_the_outbox_in_one_line(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    cases = [
        (["--attach=mqtt://127.0.0.1:1", "--attach-ca", str(not_pem)], "--attach-ca is for a TLS broker"),
        (["--attach=mqtts://127.0.0.1:1", "--attach-ca", str(not_pem)], "cannot load CA certificates (PEM) from it"),
        (["--attach=tls://127.0.0.1:1"], "expected mqtt://HOST:PORT or mqtts://HOST:PORT"),
    ]
    assert_refused_at_start(tmp_path / "data", cases)


def test_a_password_without_a_user_stops_the_outbox_in_one_line(tmp_path: Path) -> None:
    """A 3.1.1 CONNECT may not carry a password without a user name: Mosquitto closed the connection on it, and
    the outbox said it could not reach the broker and retried for ever."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_outbox",
            "run",
            "--data-dir",
            str(tmp_path / "data"),
            "--attach=mqtt://127.0.0.1:1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "EDGE_OUTBOX_ATTACH_PASSWORD": "s3cret-pw"},
    )
    assert done.returncode == 1, done.stderr
    assert "EDGE_OUTBOX_ATTACH_PASSWORD is set and the URL names no user: use mqtt[s]://USER@HOST:PORT" in done.stderr
    assert "s3cret-pw" not in done.stderr
    assert "Traceback" not in done.stderr


def test_an_attach_password_on_the_command_line_is_refused_unshown(tmp_path: Path, mosquitto: int) -> None:
    """--attach-password is how the environment variable reaches the outbox; given as a flag, the password
    showed in `ps` and the shell's history, and the outbox ran with it (here it attached, anonymous broker)."""
    done = subprocess.run(
        [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(tmp_path / "data"),
         f"--attach=mqtt://app@127.0.0.1:{mosquitto}", "--attach-password", "s3cret-pw"],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--attach-password: a password on the command line shows in process listings (ps)" in done.stderr
    assert "put it in EDGE_OUTBOX_ATTACH_PASSWORD" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_a_second_outbox_attached_to_the_same_broker_is_named_by_both(tmp_path: Path, mosquitto: int) -> None:
    """Two outboxes on one broker each take every intent, so each is sent twice; nothing said so (the docs even
    asked for a client id of its own for each outbox attached to one broker)."""
    app = Client(mosquitto, "app").connect()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = attached(tmp_path / "one", mosquitto).start()
    second = OutboxProcess(
        tmp_path / "two" / "data", mosquitto, f"--attach=mqtt://127.0.0.1:{mosquitto}", "--attach-client-id", "other"
    )
    try:
        wait_until(lambda: "attached; subscribed" in first.log(), what="the first outbox attached")
        second.start()
        wait_until(lambda: "attached; subscribed" in second.log(), what="the second outbox attached")
        app.publish("outbox/hvac/email.send", email("twice"), name="twice")
        wait_until(lambda: "twice" in stored_ids(first.data_dir) and "twice" in stored_ids(second.data_dir),
                   what="the intent taken by both")  # fmt: skip
        wait_until(lambda: "another edge outbox is attached to this broker as 'other'" in first.log(), what="named")
        wait_until(lambda: "another edge outbox is attached to this broker as 'outbox-under-test'" in second.log(),
                   what="named by the second too")  # fmt: skip
    finally:
        second.stop()
        first.stop()
        app.close()


@pytest.mark.parametrize("can_read", [True, False])
async def test_a_broker_that_sends_the_outbox_nothing_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, can_read: bool
) -> None:
    """Mosquitto grants outbox/+/+ to a user its acl_file does not let read it, and sends it nothing: apps had their
    PUBACKs, the outbox logged 'attached; subscribed' and was healthy, and every intent was lost without a word."""
    monkeypatch.setattr(attach, "KEEPALIVE_S", 1)
    port = free_port()
    broker = acl_mosquitto(tmp_path, port, "topic read outbox/+/+\n" if can_read else "")

    def pings() -> int:
        return (tmp_path / "mosquitto.log").read_text().count("Received PINGREQ from acl-test")

    client = AttachedClient(
        AttachTarget("127.0.0.1", port, "outbox", "pw", "acl-test"), cast(Intake, None), StatusFeed(_none, 0), 0
    )
    try:
        with caplog.at_level(logging.INFO, logger="edge_outbox.attach"):
            await client.start()
            await until(lambda: "attached; subscribed" in caplog.text, what="subscribed")
            await until(lambda: pings() > 2, what="the check done")  # attach.NOTHING_HEARD_PINGS: 2
    finally:
        await client.stop()
        broker.terminate()
        broker.wait(10)
    assert ("the attach broker sent nothing on outbox/+/+" in caplog.text) is not can_read
    assert "user 'outbox'" in caplog.text or can_read
    assert bool(client.fault) is not can_read  # for /healthz and `edge-outbox status`


def acl_mosquitto(
    tmp_path: Path, port: int, reads: str, writes: str = "topic write outbox/+/status/#\n"
) -> subprocess.Popen[bytes]:
    """Mosquitto whose user `outbox` (password `pw`) may write hellos and what `writes` says (statuses), and read
    what `reads` says."""
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run([require_binary("mosquitto_passwd"), "-b", str(passwords), "outbox", "pw"], check=True, timeout=30)
    acl = tmp_path / "acl"
    acl.write_text(f"user outbox\n{reads}{writes}topic write {PEER_TOPIC}\n")
    conf = tmp_path / "acl.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
        f"persistence false\nuser root\nlog_dest file {tmp_path / 'mosquitto.log'}\nlog_type all\n"
    )
    return start_mosquitto(require_binary("mosquitto"), conf, port)


@pytest.mark.timeout(120)
def test_an_outbox_its_broker_sends_nothing_is_unhealthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every intent lost to the broker's ACL, and /healthz and `edge-outbox status` said ok. Two keepalive pings
    (30 s) pass before the outbox can tell."""
    port = free_port()
    broker = acl_mosquitto(tmp_path, port, "")
    monkeypatch.setenv("EDGE_OUTBOX_ATTACH_PASSWORD", "pw")
    outbox = OutboxProcess(tmp_path / "data", port, f"--attach=mqtt://outbox@127.0.0.1:{port}").start()
    try:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="subscribed")
        wait_until(lambda: cli(outbox.data_dir, "status").returncode == 1, timeout=90, what="unhealthy")
        assert "the site broker sends nothing on outbox/+/+" in cli(outbox.data_dir, "status").stdout
    finally:
        outbox.stop()
        broker.terminate()
        broker.wait(10)


async def _none(_after: int, _limit: int) -> list[Any]:
    return []
