"""The files a technician mixes up or carries damaged: a receipt given to `cloud-bridge import`, a bundle to
`edge-outbox import-receipt`, a bundle cut short by a stick pulled out while it was copied, a bundle for another
bridge. Each is refused in one line that says which it is (the next step differs for each), nothing of it is
admitted or applied, and the right file afterwards runs each intent once. All of them used to get one message:
`bundle cannot be decrypted: not an edge-outbox bundle, damaged, or encrypted to another bridge's key`, and the
site `not a readable receipt: not a signed document: unpack(b) received extra data.`"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_bridge.ledger_states import EntryState
from tests.support.offline_site import backlog, bridge, email_policy, enrolled_site, executed, import_file
from tests.support.sneakernet import edge_cli


def _refused(done: object, *words: str) -> str:
    returncode, stderr = done.returncode, done.stderr  # type: ignore[attr-defined]
    assert returncode == 1, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for word in words:
        assert word in stderr, stderr
    return str(stderr)


@pytest.mark.timeout(300)
def test_a_file_given_for_another_or_cut_short_is_said_so_and_nothing_of_it_is_taken(tmp_path: Path) -> None:
    site = enrolled_site(tmp_path)
    other_site = enrolled_site(tmp_path / "other")  # enrolled at another bridge: tmp_path / "other" / "bridge"
    backlog(site, 3)
    backlog(other_site, 2)
    config = email_policy(tmp_path)
    mine, theirs = tmp_path / "site 7.bundle", tmp_path / "other.bundle"
    assert edge_cli(site, "export", "--out", str(mine)).returncode == 0
    assert edge_cli(other_site, "export", "--out", str(theirs)).returncode == 0
    device_id = json.loads((site / "identity" / "device.json").read_text())["device_id"]
    receipt = tmp_path / "site 7.receipt"
    assert bridge(tmp_path / "bridge", "receipt", device_id, "--out", str(receipt)).returncode == 0
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(mine.read_bytes()[: mine.stat().st_size // 2])

    def at_bridge(path: Path) -> object:
        return bridge(tmp_path / "bridge", "import", str(path), "--config", str(config), "--receipt",
                      str(tmp_path / "never.receipt"))  # fmt: skip

    _refused(at_bridge(receipt), "not a bundle: it is a receipt", "edge-outbox import-receipt", "nothing admitted")
    _refused(at_bridge(tmp_path / "s.request"), "not a bundle: it is an enrollment request", "enroll-offline")
    _refused(at_bridge(tmp_path / "s.ticket"), "not a bundle: it is an enrollment ticket")
    _refused(at_bridge(cut), "damaged or cut short", "export again on the site")
    _refused(at_bridge(theirs), "encrypted to another bridge's offline key", "the bridge the device was enrolled")
    assert not (tmp_path / "never.receipt").exists()
    assert executed(tmp_path / "bridge", EntryState.DELIVERED) == 0  # nothing of them was admitted

    _refused(edge_cli(site, "import-receipt", str(mine)), "not a receipt: it is a file encrypted to a bridge",
             "cloud-bridge import", "nothing applied")  # fmt: skip
    _refused(edge_cli(site, "import-receipt", str(tmp_path / "s.ticket")), "not a receipt: it is an enrollment ticket")
    cut_receipt = tmp_path / "cut.receipt"
    cut_receipt.write_bytes(receipt.read_bytes()[:100])
    _refused(edge_cli(site, "import-receipt", str(cut_receipt)), "damaged or cut short", "cloud-bridge receipt")

    # The right files, after all that: each intent once.
    answer = import_file(tmp_path, mine, config)
    assert executed(tmp_path / "bridge", EntryState.DELIVERED) == 3
    assert edge_cli(site, "import-receipt", str(answer)).returncode == 0
