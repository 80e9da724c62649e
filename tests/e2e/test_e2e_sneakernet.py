"""Sites that are never online: intents travel on files only, each runs exactly once at the sink."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import pytest

from edge_outbox import db, ops
from edge_outbox.identity import key_file, load_identity
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from intent_contract import sealed, signed
from intent_contract.codec import Ack, AckState, decode_acks, encode_acks, encode_batch
from intent_contract.device_token import generate_private_key_pem
from intent_contract.offline_wire import BUNDLE_TYPE, MAX_BUNDLE_INTENTS, RECEIPT_TYPE, Bundle, Receipt
from tests.support.bridge import email as email_envelope
from tests.support.edge import cli_json, stored_ids
from tests.support.net import wait_until
from tests.support.sneakernet import (
    bridge_cmd,
    bridge_public_keys,
    cut_off,
    export,
    import_bundle,
    import_receipt,
    imported,
)
from tests.support.stack import APP, Stack, ids, point_edge_at

COUNT = 300


def _offline_edge(stack: Stack, prefix: str, count: int = COUNT) -> tuple[list[str], object]:
    cut_off(stack.edge_dir)
    stack.start_edge()
    app = stack.app(client_id=f"{prefix}-app")
    intent_ids = ids(prefix, count)
    assert len(stack.publish_all(app, intent_ids)) == count
    return intent_ids, app


@pytest.mark.timeout(300)
def test_bundle_round_trip_on_files_only_runs_each_intent_once(stack: Stack, tmp_path: Path) -> None:
    intent_ids, app = _offline_edge(stack, "stick")
    bundle, first, second = tmp_path / "site.bundle", tmp_path / "r1.receipt", tmp_path / "r2.receipt"

    done = export(stack.edge_dir, bundle)
    assert done["intents"] == COUNT
    assert all(state == "accepted" for state in stack.edge_states().values())
    assert b"ops@example.com" not in bundle.read_bytes() and b"stick-00000" not in bundle.read_bytes()

    summary = imported(stack, bundle, first, "--wait", "60s")
    assert summary["device_id"] == stack.device_id
    assert summary["intents"] == COUNT
    wait_until(lambda: stack.sink.distinct() == COUNT, 60, what="execution of the imported intents")

    again = imported(stack, bundle, second)  # the same stick, twice
    assert again["states"] == {"delivered": COUNT}, again
    executions = stack.sink.executions()
    assert set(executions) == set(intent_ids)
    assert max(executions.values()) == 1

    result = import_receipt(stack.edge_dir, second)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["changed"] == COUNT
    assert set(stack.edge_states().values()) == {"delivered"}
    # The apps hear it as over MQTT, from the running outbox.
    wait_until(lambda: app.ids_with("delivered") >= set(intent_ids), 30, what="delivered statuses")  # type: ignore[attr-defined]

    # An older receipt after a newer one changes nothing; the next bundle confirms the results.
    result = import_receipt(stack.edge_dir, first)
    assert result.returncode == 0, result.stderr
    assert set(stack.edge_states().values()) == {"delivered"}
    later = export(stack.edge_dir, tmp_path / "next.bundle")
    assert later["intents"] == 0
    assert later["confirms"] == COUNT
    assert imported(stack, tmp_path / "next.bundle", tmp_path / "r3.receipt")["final_results_in_receipt"] == 0
    assert max(stack.sink.executions().values()) == 1


@pytest.mark.timeout(300)
def test_a_stored_intent_the_batch_cannot_carry_is_ended_and_the_rest_exported(stack: Stack, tmp_path: Path) -> None:
    intent_ids, app = _offline_edge(stack, "odd", 5)
    # As an older outbox's intake stored it (today's refuses it): a lone surrogate in the subject.
    raw = b'{"to": "ops@example.com", "subject": "\\ud800", "text": "x"}'
    conn = db.connect(stack.edge_dir)
    try:
        now = time.time_ns() // 1_000_000
        ops.commit_intake(conn, Admitted("odd-lone", APP, "email.send", raw, 9, now, None, True), QueueLimits(), now)
    finally:
        conn.close()
    done = export(stack.edge_dir, tmp_path / "site.bundle")  # failed as a whole before, on every try
    assert (done["intents"], done["unsendable"]) == (5, 1)
    assert stack.edge_states()["odd-lone"] == "rejected"
    wait_until(lambda: "odd-lone" in app.ids_with("rejected"), 30, what="the app told")  # type: ignore[attr-defined]
    assert imported(stack, tmp_path / "site.bundle", tmp_path / "r.receipt", "--wait", "60s")["intents"] == 5
    wait_until(lambda: stack.sink.distinct() == 5, 60, what="execution of the exported intents")
    assert set(stack.sink.executions()) == set(intent_ids)


@pytest.mark.timeout(300)
def test_bundle_imported_and_also_forwarded_over_mqtt_runs_each_intent_once(stack: Stack, tmp_path: Path) -> None:
    intent_ids, _app = _offline_edge(stack, "both")
    bundle, receipt = tmp_path / "site.bundle", tmp_path / "site.receipt"
    export(stack.edge_dir, bundle)
    imported(stack, bundle, receipt)  # admitted, not waited for: the edge still has them pending

    # A technician brings a link: the outbox sends the same intents over MQTT.
    assert stack.edge is not None
    stack.edge.stop()
    point_edge_at(stack.edge_dir, stack.bridge.mqtt_port)
    device = json.loads((stack.edge_dir / "identity" / "device.json").read_text())
    device["http_url"] = stack.bridge.url
    (stack.edge_dir / "identity" / "device.json").write_text(json.dumps(device))
    stack.start_edge()
    stack.wait_delivered(intent_ids, 90)
    assert import_receipt(stack.edge_dir, receipt).returncode == 0
    executions = stack.sink.executions()
    assert set(executions) == set(intent_ids)
    assert max(executions.values()) == 1, "an intent ran twice"
    assert set(stored_ids(stack.edge_dir).values()) == {"delivered"}


@pytest.mark.timeout(300)
def test_tampered_bundle_and_bundle_over_the_size_limit_are_refused(stack: Stack, tmp_path: Path) -> None:
    _offline_edge(stack, "tamper", 20)
    bundle = tmp_path / "site.bundle"
    export(stack.edge_dir, bundle)
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))

    result = import_bundle(stack, tampered, tmp_path / "r.receipt")
    assert result.returncode == 1
    assert "cannot be decrypted" in result.stderr
    assert not (tmp_path / "r.receipt").exists()

    result = import_bundle(stack, bundle, tmp_path / "r.receipt", "--max-bytes", "1K")
    assert result.returncode == 1
    assert "over the 1,024-byte limit" in result.stderr
    assert stack.sink.total() == 0


@pytest.mark.timeout(300)
def test_a_bundle_carries_at_most_max_bundle_intents(stack: Stack, tmp_path: Path) -> None:
    """The bridge holds an ack per intent of a bundle until its receipt is written: a bundle the device
    signed with 100,000 bare ids was 100,000 refusals and a receipt nine times its size. Export stops at
    the bound (the rest waits for the next bundle); import admits a bundle's batches up to it, no more."""
    _offline_edge(stack, "many", 1)
    conn = db.connect(stack.edge_dir)
    try:
        now = time.time_ns() // 1_000_000
        body = b'{"to": "ops@example.com", "subject": "s", "text": "x"}'
        rows = [
            Admitted(f"bulk-{i:06d}", APP, "email.send", body, 0, now, None, True) for i in range(MAX_BUNDLE_INTENTS)
        ]
        ops.commit_intakes(conn, list(rows), QueueLimits(), now)
    finally:
        conn.close()
    done = export(stack.edge_dir, tmp_path / "full.bundle")
    assert (done["intents"], done["left_out"]) == (MAX_BUNDLE_INTENTS, 1)

    bare = [msgpack.packb({"v": 1, "items": [{"id": f"x{b}-{i}"} for i in range(500)]}) for b in range(101)]
    identity = load_identity(stack.edge_dir)
    assert identity is not None
    over = Bundle(identity.device_id, bridge_public_keys(stack)["key_id"], "OVER", now, tuple(bare))
    document = signed.sign(
        over.encode(), key_file(stack.edge_dir).read_bytes(), typ=BUNDLE_TYPE, kid=identity.device_id
    )
    (tmp_path / "over.bundle").write_bytes(sealed.seal(document, bridge_public_keys(stack)["recipient"]))
    # Over the bound (as an edge before 4 Dec 2026 made them): its first batches up to the bound are admitted, each
    # answered in the receipt; the rest is not admitted (the device sends it again in its next bundle).
    result = import_bundle(stack, tmp_path / "over.bundle", tmp_path / "over.receipt")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["intents"], summary["left_out"]) == (MAX_BUNDLE_INTENTS, 500)
    receipt = Receipt.decode(
        signed.read((tmp_path / "over.receipt").read_bytes(), typ=RECEIPT_TYPE, max_bytes=1 << 30).body
    )
    answered = [ack.id for message in receipt.acks for ack in decode_acks(message)]
    assert len(answered) == MAX_BUNDLE_INTENTS
    assert set(answered) == {f"x{b}-{i}" for b in range(100) for i in range(500)}


def _forged_bundle(stack: Stack, path: Path, kid: str) -> None:
    """A bundle an attacker can make: encrypted to the bridge's public recipient, signed with a key of their own."""
    batch = encode_batch([email_envelope("forged-1")])
    body = Bundle(kid, bridge_public_keys(stack)["key_id"], "FORGED", int(time.time() * 1000), (batch,))
    document = signed.sign(body.encode(), generate_private_key_pem(), typ=BUNDLE_TYPE, kid=kid)
    path.write_bytes(sealed.seal(document, bridge_public_keys(stack)["recipient"]))


@pytest.mark.timeout(300)
def test_bundles_from_unknown_forged_or_revoked_devices_are_refused(stack: Stack, tmp_path: Path) -> None:
    intent_ids, app = _offline_edge(stack, "revoked", 20)

    _forged_bundle(stack, tmp_path / "ghost.bundle", "ghost-device")
    result = import_bundle(stack, tmp_path / "ghost.bundle", tmp_path / "ghost.receipt")
    assert result.returncode == 1
    assert "unknown device 'ghost-device'" in result.stderr

    _forged_bundle(stack, tmp_path / "forged.bundle", stack.device_id)
    result = import_bundle(stack, tmp_path / "forged.bundle", tmp_path / "forged.receipt")
    assert result.returncode == 1
    assert "does not verify" in result.stderr
    assert not (tmp_path / "forged.receipt").exists()

    export(stack.edge_dir, tmp_path / "site.bundle")
    stack.bridge.cli("devices", "revoke", stack.device_id)
    result = import_bundle(stack, tmp_path / "site.bundle", tmp_path / "site.receipt")
    assert result.returncode == 1
    assert "is revoked: nothing admitted" in result.stderr
    assert stack.sink.total() == 0

    # The receipt tells the device, which ends its backlog as it does online.
    result = import_receipt(stack.edge_dir, tmp_path / "site.receipt")
    assert result.returncode == 1
    assert "revoked" in result.stderr
    rows = {r["id"]: r for r in cli_json(stack.edge_dir, "ls", "--limit", "1000")}
    assert {rows[i]["state"] for i in intent_ids} == {"failed"}
    assert {rows[i]["code"] for i in intent_ids} == {"device_revoked_unknown"}  # exported: it may have run
    stack.publish_all(app, ["after-revocation"])  # type: ignore[arg-type]
    wait_until(
        lambda: stack.edge_states().get("after-revocation") == "failed", 30, what="a new intent ended as revoked"
    )
    assert cli_json(stack.edge_dir, "show", "after-revocation")["code"] == "device_revoked"
    assert stack.sink.total() == 0


@pytest.mark.timeout(300)
def test_receipts_of_another_bridge_or_for_another_device_are_refused(stack: Stack, tmp_path: Path) -> None:
    intent_ids, _app = _offline_edge(stack, "wrong", 5)
    export(stack.edge_dir, tmp_path / "site.bundle")
    pins = bridge_public_keys(stack)

    # Another bridge (its own offline keys) signs a receipt for this device.
    other = tmp_path / "other-bridge"
    other_keys = bridge_public_keys(stack, other)
    acks = encode_acks([Ack(i, AckState.DELIVERED, at=int(time.time() * 1000)) for i in intent_ids])
    body = Receipt(stack.device_id, other_keys["key_id"], "R1", int(time.time() * 1000), acks=(acks,)).encode()
    other_key = (other / "offline-keys" / "sign.key").read_bytes()
    for name, kid in (("other.receipt", other_keys["key_id"]), ("posing.receipt", pins["key_id"])):
        (tmp_path / name).write_bytes(signed.sign(body, other_key, typ=RECEIPT_TYPE, kid=kid))
    result = import_receipt(stack.edge_dir, tmp_path / "other.receipt")
    assert result.returncode == 1
    assert f"signed by bridge key {other_keys['key_id']}, but this device pins {pins['key_id']}" in result.stderr
    result = import_receipt(stack.edge_dir, tmp_path / "posing.receipt")
    assert result.returncode == 1
    assert "does not verify with the pinned bridge key" in result.stderr

    # This bridge's genuine receipt for another device.
    second = stack.bridge.enroll(tmp_path / "edge-2", name="edge-2")
    assert bridge_cmd(stack, "receipt", second, "--out", str(tmp_path / "theirs.receipt")).returncode == 0
    result = import_receipt(stack.edge_dir, tmp_path / "theirs.receipt")
    assert result.returncode == 1
    assert f"meant for device {second}" in result.stderr

    # Size limit: refused before it is read.
    imported(stack, tmp_path / "site.bundle", tmp_path / "site.receipt")
    result = import_receipt(stack.edge_dir, tmp_path / "site.receipt", "--max-bytes", "100")
    assert result.returncode == 1
    assert "over the 100-byte limit" in result.stderr
    assert set(stack.edge_states().values()) == {"accepted"}
    assert import_receipt(stack.edge_dir, tmp_path / "site.receipt").returncode == 0
    assert set(stack.edge_states().values()) == {"forwarded"}
