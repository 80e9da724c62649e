"""The promises the outbox makes to apps, through a live process: statuses outlive crashes, a full queue
acknowledges nothing it did not store, rejections keep the app's id, one outbox per data dir."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type
from tests.support.edge import Client, OutboxProcess, cli, email, stored_ids
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, wait_until


def test_statuses_committed_while_the_outbox_was_down_reach_a_persistent_app(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with OutboxProcess(data, free_port()) as outbox:
        _statuses_survive(outbox, data)


def _statuses_survive(outbox: OutboxProcess, data: Path) -> None:
    listener = Client(outbox.port, "listener", clean=False).connect()
    listener.subscribe("outbox/app/status/#")
    publisher = Client(outbox.port, "publisher").connect()
    for n in range(3):
        publisher.publish("outbox/app/email.send", email(f"i{n}"), name=f"i{n}")
    wait_until(lambda: {"i0", "i1", "i2"} <= listener.ids_with("accepted"), what="accepted statuses")
    publisher.close()
    outbox.kill()
    # While the outbox is down an operator cancels one: the change, and its status, are committed now.
    assert cli(data, "cancel", "i1").returncode == 0
    outbox.start()
    # The app's client reconnects by itself; its session (and subscription) survived the SIGKILL.
    wait_until(lambda: "i1" in listener.ids_with("cancelled"), what="the cancelled status after the restart")
    listener.close()


def test_an_app_can_ask_for_its_statuses_after_a_sequence_number(tmp_path: Path) -> None:
    with OutboxProcess(tmp_path / "data", free_port()) as outbox:
        app = Client(outbox.port, "app").connect()
        app.subscribe("outbox/app/status/#")
        for n in range(5):
            app.publish("outbox/app/email.send", email(f"r{n}"), name=f"r{n}")
        wait_until(lambda: len(app.statuses) == 5, what="five statuses")
        third = app.statuses[2][1]["seq"]
        app.statuses.clear()
        # Requests the outbox cannot answer are logged and dropped; the connection stays up.
        bad = [json.dumps(b).encode() for b in ({"after": 2**63}, {"after": 2**64 - 1}, {"after": -1}, {"after": "3"})]
        bad += [b"[0]", b"[" * 900 + b"]" * 900, b"{nope", b'{"after": 1}' + b" " * 1000]
        for n, body in enumerate(bad):
            app.publish("outbox/app/replay", body, name=f"bad-{n}")
        wait_until(lambda: len(app.acked) == 5 + len(bad), what="PUBACKs of the bad replay requests")
        app.publish("outbox/app/replay", json.dumps({"after": third}).encode())
        wait_until(lambda: len(app.statuses) == 2, what="the replayed statuses")
        assert [s["id"] for _t, s in app.statuses] == ["r3", "r4"]
        assert all(s["seq"] > third for _t, s in app.statuses)
        assert app.connects == 1


def test_a_rejection_is_published_under_the_apps_own_id(tmp_path: Path) -> None:
    with OutboxProcess(tmp_path / "data", free_port()) as outbox:
        app = Client(outbox.port, "app").connect()
        app.subscribe("outbox/app/status/#")
        app.publish("outbox/app/fax.send", {"id": "mine-1", "to": "x"})
        app.publish("outbox/app/email.send", {"id": "mine-2", "to": "not an address"})
        # Over 256 KiB (and within the 1 MiB packet): its id was not read, and its status had one made up.
        app.publish("outbox/app/email.send", email("mine-3", text="x" * 300_000))
        wait_until(lambda: len(app.statuses) == 3, what="three rejections")
        topics = {t: s["code"] for t, s in app.statuses}
        assert topics == {"outbox/app/status/mine-1": "unknown_kind", "outbox/app/status/mine-2": "schema_violation",
                          "outbox/app/status/mine-3": "too_large"}  # fmt: skip


def test_a_full_queue_holds_the_puback_until_there_is_room_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with OutboxProcess(data, free_port(), "--max-queue-items", "3", "--no-forward") as outbox:
        app = Client(outbox.port, "app", inflight=10).connect()
        for n in range(5):
            app.publish("outbox/app/email.send", email(f"q{n}"), name=f"q{n}")
        wait_until(lambda: len(app.acked) == 3, what="three PUBACKs")
        wait_until(lambda: (status_of(data)["intake"] or {}).get("held") == 2, what="two held in status")
        assert app.acked == {"q0", "q1", "q2"}, "only what was stored is acknowledged"
        assert set(stored_ids(data)) == {"q0", "q1", "q2"}
        status = status_of(data)
        assert "queue full" in status["intake"]["reason"]
        unhealthy = cli(data, "status")
        assert unhealthy.returncode == 1 and "unhealthy: intake paused" in unhealthy.stdout
        # Room again: the operator cancels two; the held publishes are stored and acknowledged.
        for n in (0, 1):
            assert cli(data, "cancel", f"q{n}").returncode == 0
        wait_until(lambda: len(app.acked) == 5, what="the held PUBACKs")
        wait_until(lambda: cli(data, "status").returncode == 0, what="healthy again")
        assert set(stored_ids(data)) == {f"q{n}" for n in range(5)}
        log = outbox.log()
        assert log.count("intake paused") == 1 and "intake resumed" in log
        app.close()


def status_of(data: Path) -> dict[str, Any]:
    """`edge-outbox status --json`, which exits 1 while the outbox is unhealthy."""
    result = cli(data, "status", "--json")
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert (result.returncode == 1) == bool(report["problems"])
    return report


def test_a_second_outbox_on_the_same_data_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with OutboxProcess(data, free_port()) as first:
        listen = f"127.0.0.1:{free_port()}"
        second = subprocess.run(
            [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(data), "--listen", listen],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode != 0
        assert first.proc is not None
        assert f"pid {first.proc.pid}" in second.stderr and f"127.0.0.1:{first.port}" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert cli(data, "status").returncode == 0, "ops commands work beside a running outbox"
    # Once the first is gone (however it ended), the data dir is free again.
    with OutboxProcess(data, free_port()) as again:
        assert again.proc is not None and again.proc.poll() is None


def test_an_intent_over_the_packet_limit_is_refused_as_too_large_and_nothing_behind_it_is_held(
    tmp_path: Path,
) -> None:
    """An intent over the endpoint's 1 MiB packet limit closed the connection; the app's client sent it again on
    the next, for ever (8 connections in 8 s), and none of the intents behind it was stored or acknowledged."""
    with OutboxProcess(tmp_path / "data", free_port()) as outbox:
        app = Client(outbox.port, "app", clean=False).connect()
        app.subscribe("outbox/app/status/#")
        app.publish("outbox/app/email.send", email("big-1", text="x" * (2 << 20)), name="big-1")
        names = [f"after-{n}" for n in range(5)]
        for name in names:
            app.publish("outbox/app/email.send", email(name), name=name)
        wait_until(lambda: app.acked == {"big-1", *names}, what="every PUBACK")
        wait_until(lambda: len(app.statuses) == 6, what="six statuses")
        # Its id is past what is read of it (the head): the refusal has one made up.
        (refused,) = [s for _t, s in app.statuses if s["id"] not in names]
        assert (refused["state"], refused["code"]) == ("rejected", "too_large")
        assert app.ids_with("accepted") == set(names)
        stored = stored_ids(tmp_path / "data")
        assert stored == {refused["id"]: "rejected", **dict.fromkeys(names, "accepted")}
        assert app.connects == 1
        app.close()


def test_an_id_used_again_for_another_intent_is_refused_not_answered_as_the_first(tmp_path: Path) -> None:
    """Any publish of an id the app had used was a duplicate: a second, different email under the same id was
    dropped and the app was told the first one's status, `accepted` (the bridge's ledger refuses it: id_conflict).
    Now the same kind and JSON is a duplicate (in another key order too) and anything else is refused."""
    data = tmp_path / "data"
    with OutboxProcess(data, free_port()) as outbox:
        app = Client(outbox.port, "app").connect()
        app.subscribe("outbox/app/status/#")
        first = email("alarm-1", text="Boiler 3 hot")
        app.publish("outbox/app/email.send", first, name="first")
        wait_until(lambda: app.status_of("alarm-1") == ["accepted"], what="the first one accepted")
        app.publish("outbox/app/email.send", email("alarm-1", text="Boiler 4 hot"), name="other text")
        app.publish("outbox/app/sms.send", {"id": "alarm-1", "to": "+15550100", "text": "Boiler 3 hot"}, name="kind")
        app.publish("outbox/app/email.send", dict(reversed(first.items())), name="same, reordered")
        wait_until(lambda: len(app.status_of("alarm-1")) == 4, what="three more statuses")
        states = [(s["state"], s["code"]) for _t, s in app.statuses]
        assert states == [("accepted", ""), ("rejected", "id_conflict"), ("rejected", "id_conflict"), ("accepted", "")]
        conn = sqlite3.connect(data / "outbox.db")
        try:
            rows = conn.execute("SELECT state, payload FROM intents WHERE id = 'alarm-1' ORDER BY seq").fetchall()
        finally:
            conn.close()
        assert [state for state, _payload in rows] == ["accepted", "rejected", "rejected"]
        assert json.loads(rows[0][1]) == first
        app.close()


def test_a_resent_qos2_intent_is_acknowledged_only_once_the_first_copy_is_stored(tmp_path: Path) -> None:
    """A QoS 2 intent held by a full queue, sent again (DUP) by its client on a new connection of its session, was
    answered PUBREC at once ("already taken") while nothing was stored: a SIGKILL then lost an intent the app had
    been told was in. Its PUBREC now waits for the first copy's commit."""
    data = tmp_path / "data"
    with OutboxProcess(data, free_port(), "--max-queue-items", "1") as outbox:
        clients: list[RawClient] = []

        def client(client_id: str, *, clean: bool = True) -> RawClient:
            clients.append(RawClient(outbox.port))
            clients[-1].connect(client_id, clean=clean)
            return clients[-1]

        try:
            client("filler").publish("outbox/app/email.send", json.dumps(email("filler")).encode(), 1)
            watcher = client("watcher")
            watcher.subscribe("sync/#", 0)
            first = client("q2", clean=False)
            held = p.Publish("outbox/app/email.send", json.dumps(email("held-1")).encode(), 2, False, False, 7)
            first.send(held)  # the queue is full: no PUBREC
            wait_until(lambda: "intake paused" in outbox.log(), what="intake paused")
            first.close()
            again = client("q2", clean=False)
            again.send(p.Publish(held.topic, held.payload, 2, False, True, 7))
            again.send(p.Publish("sync/after-resend", b"", 0, False, False, None))
            # The QoS 0 publish after the resend reached the watcher: the resend was handled, and an answer to it
            # would have been written before (answers go out in arrival order, from the same loop).
            (sync,) = watcher.messages(1)
            assert sync.topic == "sync/after-resend"
            assert "held-1" not in stored_ids(data)
            again.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                assert again.sock.recv(1024) == b"", "PUBREC for an intent not stored"
            again.sock.setblocking(True)
            assert cli(data, "cancel", "filler").returncode == 0  # room: the held copy is stored
            pubrec = again.receive()
            assert pubrec == p.PacketIdOnly(Type.PUBREC, 7)
            assert stored_ids(data)["held-1"] == "accepted"
            again.send(p.PacketIdOnly(Type.PUBREL, 7))
            assert again.receive() == p.PacketIdOnly(Type.PUBCOMP, 7)
            conn = sqlite3.connect(data / "outbox.db")
            try:  # the resend was not taken as a second intent
                assert conn.execute("SELECT COUNT(*) FROM intents WHERE id = 'held-1'").fetchone()[0] == 1
            finally:
                conn.close()
        finally:
            for made in clients:
                made.close()


def _intents(data: Path) -> list[tuple[str, bytes]]:
    conn = sqlite3.connect(data / "outbox.db")
    try:
        return conn.execute("SELECT id, payload FROM intents ORDER BY seq").fetchall()
    finally:
        conn.close()


def test_a_qos2_intent_resent_after_an_outbox_crash_is_stored_once_and_its_packet_id_freed_by_pubrel(
    tmp_path: Path,
) -> None:
    """A persistent app's QoS 2 intent (no id of its own) was stored, and the outbox killed before its PUBREC
    reached the app. The app sent it again (DUP, same packet id) to the restarted outbox, which had kept the
    packet ids it had taken in memory only: it stored the intent a second time, under a new id, and the email
    went out twice. The packet ids taken are now committed with their intents and freed by PUBREL."""
    data = tmp_path / "data"
    outbox = OutboxProcess(data, free_port())
    body = json.dumps(email()).encode()
    with outbox:
        app = RawClient(outbox.port)
        try:
            app.connect("q2", clean=False)
            app.send(p.Publish("outbox/app/email.send", body, 2, False, False, 7))
            wait_until(lambda: len(_intents(data)) == 1, what="the intent stored")
        finally:
            app.close()  # its PUBREC, if written, is never read
        outbox.kill()
        outbox.start()
        app = RawClient(outbox.port)
        try:
            assert app.connect("q2", clean=False).session_present
            app.send(p.Publish("outbox/app/email.send", body, 2, False, True, 7))
            assert app.receive() == p.PacketIdOnly(Type.PUBREC, 7)
            app.send(p.PacketIdOnly(Type.PUBREL, 7))
            assert app.receive() == p.PacketIdOnly(Type.PUBCOMP, 7)
        finally:
            app.close()
        assert len(_intents(data)) == 1, "the resend stored as a second intent"
        outbox.kill()
        outbox.start()
        app = RawClient(outbox.port)
        try:  # packet id 7 was freed by its PUBREL, also across a crash: now another intent, sent again (DUP) as if
            app.connect("q2", clean=False)  # its first send had been lost in the crash
            second = json.dumps(email(text="Boiler 4 hot")).encode()
            app.send(p.Publish("outbox/app/email.send", second, 2, False, True, 7))
            assert app.receive() == p.PacketIdOnly(Type.PUBREC, 7)
            app.send(p.PacketIdOnly(Type.PUBREL, 7))
            assert app.receive() == p.PacketIdOnly(Type.PUBCOMP, 7)
        finally:
            app.close()
        assert [payload for _id, payload in _intents(data)] == [body, second]


def test_a_pubrel_resent_to_a_restarted_outbox_is_completed(tmp_path: Path) -> None:
    """The app had the PUBREC of its stored QoS 2 intent, and the outbox was killed before its PUBREL: the
    restarted outbox answers the PUBREL the app sends again with PUBCOMP, and the intent stays stored once."""
    data = tmp_path / "data"
    outbox = OutboxProcess(data, free_port())
    with outbox:
        app = RawClient(outbox.port)
        try:
            app.connect("q2", clean=False)
            app.send(p.Publish("outbox/app/email.send", json.dumps(email("rel-1")).encode(), 2, False, False, 9))
            assert app.receive() == p.PacketIdOnly(Type.PUBREC, 9)
        finally:
            app.close()
        outbox.kill()
        outbox.start()
        app = RawClient(outbox.port)
        try:
            assert app.connect("q2", clean=False).session_present
            app.send(p.PacketIdOnly(Type.PUBREL, 9))
            assert app.receive() == p.PacketIdOnly(Type.PUBCOMP, 9)
        finally:
            app.close()
        assert [intent_id for intent_id, _payload in _intents(data)] == ["rel-1"]
