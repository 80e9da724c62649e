"""A key rotation carried on sticks, with the real `edge-outbox` and `cloud-bridge` commands on their data dirs:
what the technician and the operator are told when a bundle or a rotation is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_outbox.key_rotation import one_rotation
from tests.support.offline_site import backlog, bridge, enrolled_site, import_file
from tests.support.sneakernet import edge_cli
from tests.support.stack import TENANT


def _export(site: Path, out: Path) -> Path:
    done = edge_cli(site, "export", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.timeout(180)
def test_a_bundle_signed_with_a_replaced_key_is_refused_as_such_not_as_forged(tmp_path: Path) -> None:
    """A bundle exported before the site switched to its new key and imported after the new key's first use is
    refused: the operator was told it was "forged or altered", and looked for an attacker. It was the device's
    own bundle, signed with the key it replaced."""
    site = enrolled_site(tmp_path)
    backlog(site, 2)
    config = tmp_path / "bridge.toml"
    config.write_text(f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n')
    assert edge_cli(site, "rotate-key", "--offline").returncode == 0
    first = _export(site, tmp_path / "one.bundle")
    old_copy = _export(site, tmp_path / "one-again.bundle")  # the same, on a second stick: no receipt yet
    applied = edge_cli(site, "import-receipt", str(import_file(tmp_path, first, config)))
    assert applied.returncode == 0, applied.stderr
    assert "accepted this device's new key" in applied.stdout
    import_file(tmp_path, _export(site, tmp_path / "two.bundle"), config)  # the new key's first use

    refused = bridge(tmp_path / "bridge", "import", str(old_copy), "--config", str(config), "--receipt",
                     str(tmp_path / "late.receipt"))  # fmt: skip
    assert refused.returncode == 1
    assert "forged" not in refused.stderr
    assert "key it replaced" in refused.stderr, refused.stderr


@pytest.mark.timeout(180)
def test_a_rotation_the_bridge_refuses_is_told_to_the_technician_and_the_operator(tmp_path: Path) -> None:
    """A rotation in a bundle that the bridge refused (here the proposed key is already a device's key) was a
    log line at the bridge and nothing at the site: `import-receipt` said nothing, the site kept proposing the
    same refused key in every bundle, and the technician believed the key would switch with the next receipt."""
    site = enrolled_site(tmp_path)
    backlog(site, 1)
    config = tmp_path / "bridge.toml"
    config.write_text(f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n')
    identity = site / "identity"
    (identity / "next.key").write_bytes((identity / "device.key").read_bytes())  # a key in use: refused
    assert edge_cli(site, "rotate-key", "--offline").returncode == 0
    bundle = _export(site, tmp_path / "one.bundle")
    receipt = tmp_path / "one.receipt"
    imported = bridge(tmp_path / "bridge", "import", str(bundle), "--config", str(config), "--receipt", str(receipt))
    assert imported.returncode == 0, imported.stderr
    assert "key rotation refused (key_in_use)" in imported.stdout, imported.stdout

    applied = edge_cli(site, "import-receipt", str(receipt))
    assert applied.returncode == 0, applied.stderr
    assert "the bridge refused this device's new key (key_in_use)" in applied.stderr, applied.stderr
    assert not (identity / "rotation.doc").exists()  # not proposed again in every bundle
    assert not (identity / "next.key").exists()  # the next rotate-key makes a new key
    audit = bridge(tmp_path / "bridge", "audit", "--json")
    assert audit.returncode == 0, audit.stderr
    assert '"key_in_use"' in audit.stdout


@pytest.mark.timeout(180)
def test_a_receipt_is_not_applied_while_a_rotation_runs(tmp_path: Path) -> None:
    """`import-receipt` took no part in rotate-key's hold on identity/: a receipt accepting the next key switched to
    it (or, refusing it, deleted it) under a running rotate-key, which then found no next.key (a traceback) or
    switched to a key the bridge had refused."""
    site = enrolled_site(tmp_path)
    backlog(site, 1)
    config = tmp_path / "bridge.toml"
    config.write_text(f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n')
    assert edge_cli(site, "rotate-key", "--offline").returncode == 0
    receipt = import_file(tmp_path, _export(site, tmp_path / "one.bundle"), config)
    identity = site / "identity"
    keys = {name: (identity / name).read_bytes() for name in ("device.key", "next.key")}

    with one_rotation(site):  # what a running `edge-outbox rotate-key` holds
        refused = edge_cli(site, "import-receipt", str(receipt))
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"Error: another rotate-key or import-receipt is running on {site}: wait for it to end (then import"
            " this receipt again: nothing of it was applied)"
        ]
        assert {name: (identity / name).read_bytes() for name in keys} == keys

    applied = edge_cli(site, "import-receipt", str(receipt))
    assert applied.returncode == 0, applied.stderr
    assert "accepted this device's new key" in applied.stdout
    assert (identity / "device.key").read_bytes() == keys["next.key"]
