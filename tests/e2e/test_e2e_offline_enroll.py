"""A site that never connects, from enrollment to delivered results, on files only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intent_contract.device_token import public_key_pem
from tests.support.edge import Client, OutboxProcess
from tests.support.net import free_port, wait_until
from tests.support.sneakernet import (
    bridge_cmd,
    edge_cli,
    enroll_offline,
    export,
    import_bundle,
    import_receipt,
    imported,
)
from tests.support.stack import INTENT_TOPIC, Stack, ids, intent

COUNT = 40


@pytest.mark.timeout(240)
def test_a_site_enrolled_on_files_delivers_through_bundles(stack: Stack, tmp_path: Path) -> None:
    site = tmp_path / "site"
    device_id = enroll_offline(stack, site, tmp_path, "site-1")
    assert json.loads(bridge_cmd(stack, "devices", "show", device_id, "--json").stdout)["name"] == "site-1"
    request = (tmp_path / "site-1.request").read_bytes()
    code = json.loads((tmp_path / "site-1.ticket").read_text())["code"]
    assert code.encode() not in request, "the request reveals the one-time code"

    port = free_port()
    edge = OutboxProcess(site, port).start()
    try:
        wait_until(lambda: "intents leave in bundles" in edge.log(), 30, what="the outbox's start")
        app = Client(port, "site-app").connect()
        stack.apps.append(app)
        app.subscribe("outbox/e2e/status/#")
        intent_ids = ids("enrolled-offline", COUNT)
        for intent_id in intent_ids:
            app.publish(INTENT_TOPIC, intent(intent_id), name=intent_id)
        wait_until(lambda: set(intent_ids) <= app.acked, 30, what="PUBACKs")
        export(site, tmp_path / "site.bundle")
        summary = imported(stack, tmp_path / "site.bundle", tmp_path / "site.receipt", "--wait", "60s")
        assert summary["device_id"] == device_id
        assert import_receipt(site, tmp_path / "site.receipt").returncode == 0
        wait_until(lambda: app.ids_with("delivered") >= set(intent_ids), 30, what="delivered statuses")
        assert set(stack.sink.executions().values()) == {1}
        assert set(stack.sink.executions()) == set(intent_ids)
    finally:
        edge.stop()


@pytest.mark.timeout(240)
def test_offline_enrollment_refuses_a_used_code_and_a_response_for_another_key(stack: Stack, tmp_path: Path) -> None:
    enroll_offline(stack, tmp_path / "one", tmp_path, "one")
    # The same ticket again, on another site: its code is used.
    again = edge_cli(tmp_path / "two", "enroll-request", "--ticket", str(tmp_path / "one.ticket"), "--out",
                     str(tmp_path / "two.request"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    result = bridge_cmd(stack, "devices", "enroll-offline", str(tmp_path / "two.request"), "--out", str(tmp_path / "x"))
    assert result.returncode == 1
    assert "code unknown, used or expired" in result.stderr
    # The first site's response, carried to the second site by mistake: not for its key.
    result = edge_cli(tmp_path / "two", "enroll-import", str(tmp_path / "one.response"))
    assert result.returncode == 1
    assert "another key" in result.stderr
    assert not (tmp_path / "two" / "identity" / "device.json").exists()


@pytest.mark.timeout(240)
def test_a_site_that_never_connects_rotates_its_key_through_bundles(stack: Stack, tmp_path: Path) -> None:
    site = tmp_path / "site"
    device_id = enroll_offline(stack, site, tmp_path, "site-rot")
    port = free_port()
    edge = OutboxProcess(site, port).start()
    try:
        app = Client(port, "rot-app").connect()
        stack.apps.append(app)
        first, second = ids("rot-a", 5), ids("rot-b", 5)
        for intent_id in first:
            app.publish(INTENT_TOPIC, intent(intent_id), name=intent_id)
        wait_until(lambda: set(first) <= app.acked, 30, what="PUBACKs")
        old_key = (site / "identity" / "device.key").read_bytes()
        result = edge_cli(site, "rotate-key")  # no bridge address: the proposal waits for the next bundle
        assert result.returncode == 0, result.stderr
        assert "next bundle" in result.stdout

        export(site, tmp_path / "one.bundle")
        imported(stack, tmp_path / "one.bundle", tmp_path / "one.receipt", "--wait", "60s")
        result = import_receipt(site, tmp_path / "one.receipt")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["key_rotated"] is True
        new_key = (site / "identity" / "device.key").read_bytes()
        assert new_key != old_key

        for intent_id in second:
            app.publish(INTENT_TOPIC, intent(intent_id), name=intent_id)
        wait_until(lambda: set(second) <= app.acked, 30, what="PUBACKs")
        export(site, tmp_path / "two.bundle")  # signed with the new key: its first use
        assert imported(stack, tmp_path / "two.bundle", tmp_path / "two.receipt", "--wait", "60s")["intents"] == 5
        shown = json.loads(bridge_cmd(stack, "devices", "show", device_id, "--json").stdout)
        assert shown["public_key"].strip() == public_key_pem(new_key).strip()
        assert shown["next_public_key"] is None
        # The old key has ended: the first bundle, signed with it, no longer passes (and is said to be signed
        # with the replaced key, not forged).
        result = import_bundle(stack, tmp_path / "one.bundle", tmp_path / "again.receipt")
        assert result.returncode == 1
        assert "signed with the key device" in result.stderr and "before its key rotation" in result.stderr
        assert set(stack.sink.executions()) == set(first) | set(second)
        assert set(stack.sink.executions().values()) == {1}
    finally:
        edge.stop()
