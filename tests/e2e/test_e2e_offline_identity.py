"""An offline site's identity on its real CLIs and a real bridge: what an export that fails leaves marked,
a revocation that holds in every mode and is the old device's only, and intents sent under an identity
the site no longer has."""

from __future__ import annotations

import datetime
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge_outbox import db, ops
from edge_outbox.identity import key_file
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from tests.support.edge import Client, OutboxProcess, cli, cli_json, stored_ids
from tests.support.net import free_port, wait_until
from tests.support.sneakernet import bridge_cmd, cut_off, enroll_offline, export, import_receipt, imported
from tests.support.stack import APP, INTENT_TOPIC, STATUS_TOPIC, Stack, intent


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


@contextmanager
def _running(stack: Stack, site: Path, *extra: str) -> Iterator[Client]:
    """`edge-outbox run` on `site` and an app listening to its statuses; both stopped after."""
    port = free_port()
    edge = OutboxProcess(site, port, *extra).start()
    try:
        app = Client(port, f"app-{port}").connect()
        stack.apps.append(app)
        app.subscribe(STATUS_TOPIC)
        yield app
    finally:
        edge.stop()


def _publish(app: Client, intent_id: str) -> None:
    app.publish(INTENT_TOPIC, intent(intent_id), name=intent_id)
    wait_until(lambda: intent_id in app.acked, 30, what=f"the PUBACK of {intent_id}")


def _revoked_receipt(stack: Stack, device_id: str, out: Path) -> Path:
    stack.bridge.cli("devices", "revoke", device_id)
    assert bridge_cmd(stack, "receipt", device_id, "--out", str(out)).returncode == 0
    return out


def _ended_as_revoked(site: Path, app: Client, intent_id: str) -> None:
    wait_until(lambda: stored_ids(site).get(intent_id) == "failed", 30, what=f"{intent_id} ended as revoked")
    assert cli_json(site, "show", intent_id)["code"] == "device_revoked"
    wait_until(lambda: intent_id in app.ids_with("failed"), 30, what="the app told")


def _unhealthy_as_revoked(site: Path) -> None:
    result = cli(site, "status", "--json")
    assert result.returncode == 1, result.stdout
    assert "this device was revoked at the bridge" in json.loads(result.stdout)["problems"]


@pytest.mark.timeout(180)
def test_a_revoked_site_with_no_bridge_address_ends_every_new_intent(stack: Stack, tmp_path: Path) -> None:
    """docs/offline-sites.md: after a receipt says the device is revoked the outbox ends every new intent.
    A site with no bridge address runs no forwarder, which alone did that: new intents stayed accepted for
    ever and `status` said healthy."""
    site = tmp_path / "site"
    device_id = enroll_offline(stack, site, tmp_path, "no-link")
    receipt = _revoked_receipt(stack, device_id, tmp_path / "revoked.receipt")
    assert import_receipt(site, receipt).returncode == 1
    with _running(stack, site) as app:
        _publish(app, "after-revocation")
        _ended_as_revoked(site, app, "after-revocation")
        _unhealthy_as_revoked(site)
    _unhealthy_as_revoked(site)  # stored: also with no outbox running


@pytest.mark.timeout(180)
def test_a_revoked_site_outside_its_forwarding_window_ends_every_new_intent(stack: Stack, tmp_path: Path) -> None:
    """A receipt applied while `run` waits for its next window: new intents ended at once, not when the window
    opens (the forwarder looked for the revocation only before it waited)."""
    cut_off(stack.edge_dir)
    later = (datetime.datetime.now().hour + 3) % 24
    with _running(stack, stack.edge_dir, "--forward-window", f"{later:02d}:00-{later:02d}:10") as app:
        receipt = _revoked_receipt(stack, stack.device_id, tmp_path / "revoked.receipt")
        assert import_receipt(stack.edge_dir, receipt).returncode == 1
        _publish(app, "after-revocation")
        _ended_as_revoked(stack.edge_dir, app, "after-revocation")
        _unhealthy_as_revoked(stack.edge_dir)


@pytest.mark.timeout(240)
def test_a_site_enrolled_again_after_its_revocation_is_a_new_device(stack: Stack, tmp_path: Path) -> None:
    """The revocation is the old device's: enrolled again (as the outbox advises), the data dir exports and
    runs as the new device, whose intents are delivered; the old identity, put back, is still revoked.
    Before, the old device's revocation stayed in the database for whatever identity came next."""
    site = tmp_path / "site"
    old = enroll_offline(stack, site, tmp_path, "site-old")
    assert import_receipt(site, _revoked_receipt(stack, old, tmp_path / "revoked.receipt")).returncode == 1
    shutil.move(site / "identity", tmp_path / "old-identity")
    new = enroll_offline(stack, site, tmp_path, "site-new")
    assert new != old

    with _running(stack, site) as app:
        _publish(app, "as-new-device")
        assert cli(site, "status").returncode == 0
        bundle = export(site, tmp_path / "new.bundle")
        assert bundle["intents"] == 1
        assert imported(stack, tmp_path / "new.bundle", tmp_path / "new.receipt", "--wait", "60s")["device_id"] == new
        assert import_receipt(site, tmp_path / "new.receipt").returncode == 0
        wait_until(lambda: "as-new-device" in app.ids_with("delivered"), 30, what="delivered as the new device")
    assert stack.sink.executions()["as-new-device"] == 1

    shutil.move(site / "identity", tmp_path / "new-identity")
    shutil.move(tmp_path / "old-identity", site / "identity")
    _one_line_error(cli(site, "export", "--out", str(tmp_path / "old.bundle")), "revoked")


@pytest.mark.timeout(240)
def test_intents_sent_as_the_old_device_are_not_sent_again_as_the_new_one(stack: Stack, tmp_path: Path) -> None:
    """An intent exported as the old device (the bridge admitted it) went out again in the new device's
    bundle after the site was enrolled again, and the bridge, whose ledger holds one row per (device,
    intent id), ran it twice. Enrolling again now ends it failed/identity_changed (its app is told);
    an intent never sent goes out as the new device."""
    site = tmp_path / "site"
    old = enroll_offline(stack, site, tmp_path, "site-old")
    with _running(stack, site) as app:
        _publish(app, "exported")
        export(site, tmp_path / "old.bundle")
        assert imported(stack, tmp_path / "old.bundle", tmp_path / "old.receipt")["device_id"] == old
        _publish(app, "never-sent")

        shutil.move(site / "identity", tmp_path / "old-identity")  # damaged, say: the site is enrolled again
        new = enroll_offline(stack, site, tmp_path, "site-new")
        wait_until(lambda: "exported" in app.ids_with("failed"), 30, what="the app told")
    shown = cli_json(site, "show", "exported")
    assert (shown["state"], shown["code"]) == ("failed", "identity_changed")
    assert old in shown["detail"] and new in shown["detail"]
    assert stored_ids(site)["never-sent"] == "accepted"

    done = export(site, tmp_path / "new.bundle")
    assert done["intents"] == 1
    assert imported(stack, tmp_path / "new.bundle", tmp_path / "new.receipt", "--wait", "60s")["device_id"] == new
    wait_until(lambda: stack.sink.distinct() == 2, 60, what="both intents executed")
    assert stack.sink.executions() == {"exported": 1, "never-sent": 1}
