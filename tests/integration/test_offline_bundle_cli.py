"""Bundles and receipts as the technician carries them, without a running bridge: `edge-outbox export` and
`import-receipt` on a site's data dir, `cloud-bridge import` / `receipt` / `intents retry` on a bridge data
dir, files between them. What the bridge's executor does is played on its ledger (offline_site.executed).
Every result the site applied is confirmed once and no other; what the commands say is what happened."""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import time
from pathlib import Path

import pytest

from cloud_bridge.ledger_states import EntryState
from edge_outbox import bundle, db
from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.db import CLOCK_KEY
from edge_outbox.errors import ConfigError
from edge_outbox.event_log import set_meta
from edge_outbox.identity import load_identity
from intent_contract import files
from intent_contract.codec import AckState
from intent_contract.offline_wire import DEFAULT_FILE_BYTES, MAX_BUNDLE_INTENTS
from tests.support.cli_output import on_a_terminal
from tests.support.edge import stored_ids
from tests.support.offline_site import (
    backlog,
    bridge,
    email_policy,
    enrolled_site,
    executed,
    import_file,
    receipt_acks,
)
from tests.support.sneakernet import edge_args, edge_cli
from tests.support.stack import TENANT


@pytest.mark.timeout(300)
def test_the_bundle_after_a_receipt_confirms_every_result_the_receipt_brought(tmp_path: Path) -> None:
    """A bundle carries up to 50,000 intents but confirmed at most 20,000 results: each trip of a full bundle
    left 30,000 results the site had applied unconfirmed at the bridge, named again in every receipt and
    never purged, growing by as much per trip. Here 25,000 intents end at import (refused by policy)."""
    count = 25_000
    site = enrolled_site(tmp_path)
    backlog(site, count)
    config = tmp_path / "bridge.toml"
    config.write_text(f'[tenants.{TENANT}.policy]\nkinds = ["sms.send"]\n')  # email.send refused: final at once

    first = edge_cli(site, "export", "--out", str(tmp_path / "one.bundle"), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["intents"] == count
    receipt = import_file(tmp_path, tmp_path / "one.bundle", config)
    assert {ack.state for ack in receipt_acks(receipt)} == {AckState.REJECTED}
    applied = edge_cli(site, "import-receipt", str(receipt), "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["changed"] == count

    second = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--json")

    assert second.returncode == 0, second.stderr
    assert (json.loads(second.stdout)["intents"], json.loads(second.stdout)["confirms"]) == (0, count)
    assert receipt_acks(import_file(tmp_path, tmp_path / "two.bundle", config)) == []  # nothing left to repeat


@pytest.mark.timeout(180)
def test_the_result_of_an_operators_retry_reaches_the_site_whose_confirm_was_on_its_way(tmp_path: Path) -> None:
    """The site applies attempt 1's failure from a receipt and confirms it in its next bundle; meanwhile the
    operator retried the intent and attempt 2 was delivered. That confirm confirmed attempt 2's result, which
    no receipt carried after: the site kept `failed` for an intent the bridge had delivered."""
    site = enrolled_site(tmp_path)
    identity = load_identity(site)
    assert identity is not None
    backlog(site, 1)
    config = email_policy(tmp_path)
    assert edge_cli(site, "export", "--out", str(tmp_path / "one.bundle")).returncode == 0
    import_file(tmp_path, tmp_path / "one.bundle", config)
    executed(tmp_path / "bridge", EntryState.FAILED, "smtp_refused")
    failed = tmp_path / "failed.receipt"
    assert bridge(tmp_path / "bridge", "receipt", identity.device_id, "--out", str(failed)).returncode == 0
    assert edge_cli(site, "import-receipt", str(failed)).returncode == 0
    assert stored_ids(site) == {"bulk-000000": "failed"}
    retried = bridge(tmp_path / "bridge", "intents", "retry", identity.device_id, "bulk-000000", "--operator", "ops")
    assert retried.returncode == 0, retried.stderr
    executed(tmp_path / "bridge", EntryState.DELIVERED)

    assert edge_cli(site, "export", "--out", str(tmp_path / "two.bundle")).returncode == 0  # confirms attempt 1
    receipt = import_file(tmp_path, tmp_path / "two.bundle", config)

    assert [(a.id, a.state, a.attempt) for a in receipt_acks(receipt)] == [("bulk-000000", AckState.DELIVERED, 2)]
    assert edge_cli(site, "import-receipt", str(receipt)).returncode == 0
    assert stored_ids(site) == {"bulk-000000": "delivered"}


def test_a_bundle_whose_directory_could_not_be_synced_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle is renamed into place, then its directory synced: when that sync failed (a stick pulled out,
    an I/O error) export said "nothing was marked sent" and left the bundle there, whose intents could then
    be cancelled or expire on the site while the bridge ran them."""
    site = enrolled_site(tmp_path)
    backlog(site, 3)
    out = tmp_path / "stick" / "site.bundle"
    out.parent.mkdir()

    def pulled_out(_directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files, "fsync_directory", pulled_out)
    conn = db.connect(site)
    try:
        with pytest.raises(ConfigError, match=r"Input/output error; nothing was marked sent$"):
            bundle.export(conn, site, out, max_bytes=DEFAULT_FILE_BYTES, now=time.time_ns() // 1_000_000,
                          new_id=lambda: "B1")  # fmt: skip
    finally:
        conn.close()
    assert list(out.parent.iterdir()) == []
    assert stored_ids(site) == {f"bulk-{i:06d}": "accepted" for i in range(3)}
    assert edge_cli(site, "cancel", "bulk-000000").returncode == 0  # never sent: it may still be cancelled


@pytest.mark.timeout(180)
def test_export_says_the_intents_it_left_out_go_after_the_receipt_not_in_an_export_now(tmp_path: Path) -> None:
    """It said "export again for them", but until the receipt is applied another export takes the same intents
    first and leaves out the same ones: the technician carried two copies of one bundle and none of the rest."""
    site = enrolled_site(tmp_path)
    backlog(site, 20_000)
    first = edge_cli(site, "export", "--out", str(tmp_path / "one.bundle"), "--max-bytes", "3M")
    again = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--max-bytes", "3M", "--json")

    assert first.returncode == 0, first.stderr
    left_out = json.loads(again.stdout)["left_out"]
    assert 0 < left_out < 20_000
    assert f"{left_out} intents did not fit in this bundle" in first.stderr  # the same ones, exported again now
    assert "after this one's receipt is applied" in first.stderr
    assert "export again for them" not in first.stderr


@pytest.mark.timeout(120)
def test_import_counts_every_final_result_its_receipt_carries(tmp_path: Path) -> None:
    """The receipt carries every result the device has not confirmed, but import counted only the results of
    the bundle just imported: "receipt with 0 final results" for a receipt that brought two."""
    site = enrolled_site(tmp_path)
    backlog(site, 2)
    config = email_policy(tmp_path)
    assert edge_cli(site, "export", "--out", str(tmp_path / "one.bundle")).returncode == 0
    accepted = import_file(tmp_path, tmp_path / "one.bundle", config)
    assert edge_cli(site, "import-receipt", str(accepted)).returncode == 0  # both forwarded: not in a bundle again
    executed(tmp_path / "bridge", EntryState.DELIVERED)
    two = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--json")
    assert two.returncode == 0 and json.loads(two.stdout)["intents"] == 0, two.stderr

    done = bridge(tmp_path / "bridge", "import", str(tmp_path / "two.bundle"), "--config", str(config),
                  "--receipt", str(tmp_path / "two.receipt"), "--json")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["final_results_in_receipt"] == 2
    assert len(receipt_acks(tmp_path / "two.receipt")) == 2


@pytest.mark.timeout(180)
def test_export_on_a_terminal_ends_its_progress_with_what_went_in_on_a_line_of_its_own(tmp_path: Path) -> None:
    """A bundle that cannot take every pending intent stops short of the total: the progress line stayed at
    an earlier tenth in a log, and on a terminal it had no newline, so the command's own message was printed
    after it on the same line (`exported intents: 7,416/20,000bundle ...`)."""
    site = enrolled_site(tmp_path)
    backlog(site, 20_000)
    shown = on_a_terminal(edge_args(site, "export", "--out", str(tmp_path / "one.bundle"), "--max-bytes", "3M"))
    logged = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--max-bytes", "3M", "--json")

    lines = [line.rsplit("\r", 1)[-1] for line in shown.splitlines()]
    bundled = next(line for line in lines if "bundle " in line)
    assert bundled.startswith("bundle "), shown
    went_in = int(bundled.split(": ", 1)[1].split(" intents", 1)[0])
    assert 0 < went_in < 20_000
    assert lines[lines.index(bundled) - 1] == f"exported intents: {went_in:,}/20,000"
    assert logged.returncode == 0, logged.stderr
    again = json.loads(logged.stdout)["intents"]  # the same ones again: no receipt was applied
    progress = [line for line in logged.stderr.splitlines() if line.startswith("exported intents: ")]
    assert progress[-1] == f"exported intents: {again:,}/20,000", logged.stderr


@pytest.mark.timeout(180)
def test_an_import_whose_receipt_cannot_be_written_says_what_it_admitted_and_how_to_get_the_receipt(
    tmp_path: Path,
) -> None:
    """It said only "cannot write ...": the technician could not tell the bundle's intents were admitted (they
    will run), nor that importing it again writes the receipt without running anything twice."""
    site = enrolled_site(tmp_path)
    backlog(site, 2)
    config = email_policy(tmp_path)
    assert edge_cli(site, "export", "--out", str(tmp_path / "one.bundle")).returncode == 0
    nowhere = tmp_path / "no-such-dir" / "one.receipt"

    done = bridge(tmp_path / "bridge", "import", str(tmp_path / "one.bundle"), "--config", str(config),
                  "--receipt", str(nowhere))  # fmt: skip

    assert done.returncode == 1
    assert "2 intents (2 accepted)" in done.stderr and f"cannot write {nowhere}" in done.stderr, done.stderr
    assert "import the bundle again" in done.stderr, done.stderr
    receipt = import_file(tmp_path, tmp_path / "one.bundle", config)
    assert sorted((a.id, a.state) for a in receipt_acks(receipt)) == [
        ("bulk-000000", AckState.ACCEPTED), ("bulk-000001", AckState.ACCEPTED)
    ]  # fmt: skip
    assert executed(tmp_path / "bridge", EntryState.DELIVERED) == 2  # each intent once


@pytest.mark.timeout(300)
def test_import_receipt_says_the_clock_was_corrected_only_when_this_receipt_corrected_it(tmp_path: Path) -> None:
    """Every receipt said `this device's clock is ... ; corrected`, the one applied again and an older one too, which
    taught nothing: the technician could not tell whether the clock was still being fixed. It says by how much."""
    site = enrolled_site(tmp_path)
    days_ahead = BridgeClock(-3 * 86_400_000, "test", 0)  # as if this device's clock were 3 days ahead
    conn = db.connect(site)
    try:
        set_meta(conn, CLOCK_KEY, days_ahead.to_json())
        conn.commit()
    finally:
        conn.close()
    device_id = load_identity(site).device_id  # type: ignore[union-attr]
    receipt = tmp_path / "site.receipt"
    assert bridge(tmp_path / "bridge", "receipt", device_id, "--out", str(receipt)).returncode == 0

    first = edge_cli(site, "import-receipt", str(receipt))
    assert first.returncode == 0, first.stderr
    assert "corrected by 2d23h" in first.stdout, first.stdout  # from 3 days ahead to within the trip's bounds

    again = edge_cli(site, "import-receipt", str(receipt))
    assert again.returncode == 0, again.stderr
    assert "clock" not in again.stdout, again.stdout
    as_json = edge_cli(site, "import-receipt", str(receipt), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["corrected_ms"] == 0


def test_an_import_under_a_config_without_the_devices_tenant_admits_nothing(tmp_path: Path) -> None:
    """`cloud-bridge import --config` with another file than the nodes' (a staging copy, a stale one) that has no
    table for the device's tenant: every intent of the bundle was rejected policy_tenant for good, and the
    receipt told the site so. Now the import is refused, nothing admitted and no receipt written; the same
    bundle imported under the right config is admitted whole."""
    site = enrolled_site(tmp_path)
    backlog(site, 3)
    assert edge_cli(site, "export", "--out", str(tmp_path / "one.bundle")).returncode == 0
    wrong = tmp_path / "staging.toml"
    wrong.write_text('[tenants.someone-else.policy]\nkinds = ["email.send"]\n')
    receipt = tmp_path / "one.receipt"
    refused = bridge(tmp_path / "bridge", "import", str(tmp_path / "one.bundle"), "--config", str(wrong),
                     "--receipt", str(receipt))  # fmt: skip
    assert refused.returncode == 1, refused.stdout
    assert f"the config has no [tenants.{TENANT}] table" in refused.stderr, refused.stderr
    assert "nothing imported" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not receipt.exists()
    assert executed(tmp_path / "bridge", EntryState.DELIVERED) == 0  # no row was admitted
    accepted = import_file(tmp_path, tmp_path / "one.bundle", email_policy(tmp_path))
    assert {ack.state for ack in receipt_acks(accepted)} == {AckState.ACCEPTED}
    assert len(receipt_acks(accepted)) == 3


@pytest.mark.timeout(300)
def test_a_bundle_over_the_bound_from_an_older_edge_is_taken_in_part_and_the_rest_comes_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge-outbox before 4 Dec 2026 does not stop a bundle at MAX_BUNDLE_INTENTS (its only bound is the
    file's 64 MiB): a site with a larger backlog made one, and the bridge refused it whole (`bundle_too_large`),
    admitting nothing. That edge makes the same bundle again at every export: the site's backlog never went
    through. Now the bridge admits the first batches up to the bound; the rest, not in the receipt, go in the next
    bundle, and every intent is admitted once."""
    count = MAX_BUNDLE_INTENTS + 500
    site = enrolled_site(tmp_path)
    backlog(site, count)
    config = email_policy(tmp_path)
    old = tmp_path / "old-edge.bundle"
    monkeypatch.setattr(bundle, "MAX_BUNDLE_INTENTS", 1 << 30)  # the export of an edge before the bound
    conn = db.connect(site)
    try:
        made = bundle.export(conn, site, old, max_bytes=DEFAULT_FILE_BYTES, now=time.time_ns() // 1_000_000,
                             new_id=lambda: "OLDEDGE")  # fmt: skip
    finally:
        conn.close()
    monkeypatch.undo()
    assert (made.intents, made.left_out) == (count, 0)

    result = bridge(tmp_path / "bridge", "import", str(old), "--config", str(config), "--receipt",
                    str(tmp_path / "old.receipt"), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["intents"], summary["left_out"]) == (MAX_BUNDLE_INTENTS, 500)
    first = receipt_acks(tmp_path / "old.receipt")
    assert len(first) == MAX_BUNDLE_INTENTS and {a.state for a in first} == {AckState.ACCEPTED}
    applied = edge_cli(site, "import-receipt", str(tmp_path / "old.receipt"), "--json")
    assert applied.returncode == 0, applied.stderr

    rest = edge_cli(site, "export", "--out", str(tmp_path / "rest.bundle"), "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["intents"] == 500
    second = receipt_acks(import_file(tmp_path, tmp_path / "rest.bundle", config))
    assert {a.state for a in second} == {AckState.ACCEPTED}  # none a duplicate of the first bundle's
    assert {a.id for a in first} | {a.id for a in second} == {f"bulk-{i:06d}" for i in range(count)}
    with contextlib.closing(sqlite3.connect(tmp_path / "bridge" / "ledger.db")) as ledger:
        rows = ledger.execute("SELECT COUNT(*), COUNT(DISTINCT intent_id) FROM intents").fetchone()
    assert rows == (count, count)  # each admitted once
