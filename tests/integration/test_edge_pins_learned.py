"""A device enrolled by a bridge before offline bundles existed has no `identity/bridge.json` (the bridge's offline
keys): its identity is `device.key`, `ca.pem` and `device.json` only. Upgraded, such a device could make no bundle
(`export` refused: "enroll it again", which ends every intent sent as the device it was). Now, once connected to
a bridge that has offline keys, it pins them from `GET /v1/device`, and its site can go offline: the bundle it
exports is imported by the bridge, each intent executed once, and the receipt applied."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.net import wait_until
from tests.support.sneakernet import bridge_public_keys, cut_off, edge_cli, export, import_receipt, imported
from tests.support.stack import assert_exactly_once, ids, running_stack


def test_a_device_enrolled_before_offline_keys_pins_them_once_connected_and_its_bundles_go_through(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    with running_stack(tmp_path, server_cert_files) as stack:
        pins = stack.edge_dir / "identity" / "bridge.json"
        pins.unlink()  # as an enrollment before offline bundles left the identity
        assert edge_cli(stack.edge_dir, "export", "--out", str(tmp_path / "none.bundle")).returncode == 1

        stack.start_edge()
        app = stack.app()
        online = stack.publish_all(app, ids("online", 5))
        stack.wait_delivered(sorted(online), 60)
        wait_until(pins.exists, 30, what="the bridge's offline keys pinned")
        keys = bridge_public_keys(stack)
        assert json.loads(pins.read_text()) == {k: keys[k] for k in ("key_id", "recipient", "signing_key")}

        assert stack.edge is not None
        stack.edge.stop()
        cut_off(stack.edge_dir)  # the site loses its link
        stack.start_edge()
        offline = stack.publish_all(app, ids("offline", 20))
        stack.edge.stop()
        bundle, receipt = tmp_path / "site.bundle", tmp_path / "site.receipt"
        assert export(stack.edge_dir, bundle)["intents"] == len(offline)
        summary = imported(stack, bundle, receipt, "--wait", "60s")
        assert summary["revoked"] is False, summary
        applied = import_receipt(stack.edge_dir, receipt)
        assert applied.returncode == 0, applied.stderr

        assert_exactly_once(online | offline, stack.sink, stack.edge_states())
