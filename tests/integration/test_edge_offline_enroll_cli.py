"""Offline enrollment and receipts as the technician runs them, without a running bridge: the real
`cloud-bridge devices enroll-ticket` / `enroll-offline` on a bridge data dir, the real `edge-outbox`
commands on a site's data dir, files between them. What must be refused is refused in one line, before
anything is spent or lost."""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cloud_bridge.ledger_states import EntryState
from cloud_bridge.store import open_store
from cloud_bridge.store.url import StoreUrl
from edge_outbox import bundle, db, ops
from edge_outbox.errors import ConfigError
from edge_outbox.identity import load_identity
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from intent_contract import files, signed
from intent_contract.codec import Ack, AckState, decode_acks
from intent_contract.device_token import generate_private_key_pem
from intent_contract.offline_wire import (
    DEFAULT_FILE_BYTES,
    ENROLL_FILE_BYTES,
    ENROLL_RESPONSE_TYPE,
    RECEIPT_TYPE,
    Receipt,
)
from tests.support import disk
from tests.support.cli_output import assert_one_line
from tests.support.edge import stored_ids
from tests.support.sneakernet import edge_args, edge_cli, run
from tests.support.stack import TENANT, bridge_cli

FORGED_KID = "x\x1b]0;owned\x07\nreceipt r9: 1 delivered"


def bridge(bridge_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*bridge_cli(), *args, "--data-dir", str(bridge_dir)])


def ticket(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / f"{name}.ticket"
    made = bridge(tmp_path / "bridge", "devices", "enroll-ticket", "--tenant", TENANT, "--name", name, "--out",
                  str(out), *extra)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def request(tmp_path: Path, site: Path, ticket_file: Path, name: str, *extra: str) -> Path:
    out = tmp_path / f"{name}.request"
    made = edge_cli(site, "enroll-request", "--ticket", str(ticket_file), "--out", str(out), *extra)
    assert made.returncode == 0, made.stderr
    return out


def response(tmp_path: Path, request_file: Path) -> Path:
    out = request_file.with_suffix(".response")
    answered = bridge(tmp_path / "bridge", "devices", "enroll-offline", str(request_file), "--out", str(out))
    assert answered.returncode == 0, answered.stderr
    return out


def enrolled_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    imported = edge_cli(
        site, "enroll-import", str(response(tmp_path, request(tmp_path, site, ticket(tmp_path, "s"), "s")))
    )
    assert imported.returncode == 0, imported.stderr
    return site


def test_a_key_id_from_a_file_is_written_out_in_the_refusal(tmp_path: Path) -> None:
    site = enrolled_site(tmp_path)
    key = generate_private_key_pem()
    receipt = tmp_path / "forged.receipt"
    body = Receipt("dev-1", "k", "r1", 0, None, None, (), None).encode()
    receipt.write_bytes(signed.sign(body, key, typ=RECEIPT_TYPE, kid=FORGED_KID))
    assert_one_line(edge_cli(site, "import-receipt", str(receipt)), "bridge key x\\u001b]0;owned\\u0007\\u000areceipt")

    fresh = tmp_path / "fresh"
    request(tmp_path, fresh, ticket(tmp_path, "f"), "f")
    forged = tmp_path / "forged.response"
    forged.write_bytes(signed.sign(b"{}", key, typ=ENROLL_RESPONSE_TYPE, kid=FORGED_KID))
    assert_one_line(edge_cli(fresh, "enroll-import", str(forged)), "bridge key x\\u001b]0;owned\\u0007\\u000areceipt")


def test_an_enrollment_response_over_the_limit_is_refused_in_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    request(tmp_path, site, ticket(tmp_path, "s"), "s")
    big = tmp_path / "big.response"
    big.write_bytes(b"x" * (ENROLL_FILE_BYTES + 1))
    assert_one_line(edge_cli(site, "enroll-import", str(big)), f"over the {ENROLL_FILE_BYTES:,}-byte limit")


def _address_space(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_huge_ticket_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.ticket"
    with huge.open("wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB to read, more than the process may hold
    args = edge_args(tmp_path / "site", "enroll-request", "--ticket", str(huge), "--out", str(tmp_path / "r"))
    # 1 GiB of address space: the interpreter and its libraries fit, reading the ticket whole does not
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=60, check=False, preexec_fn=lambda: _address_space(1 << 30)
    )
    assert_one_line(result, f"{huge}: 4,294,967,296 bytes is over the {ENROLL_FILE_BYTES:,}-byte limit")


BAD_URL = "https://[bridge.example.com]:8443"


def test_a_malformed_bridge_url_is_refused_before_the_code_is_spent(tmp_path: Path) -> None:
    out = tmp_path / "bad.ticket"
    made = bridge(tmp_path / "bridge", "devices", "enroll-ticket", "--tenant", TENANT, "--name", "b", "--out", str(out),
                  "--bridge-url", BAD_URL)  # fmt: skip
    assert made.returncode == 2 and "--bridge-url" in made.stderr and "Traceback" not in made.stderr, made.stderr
    assert not out.exists()
    # a ticket from a bridge that did not check: refused on the site, before a request exists to redeem it
    good = ticket(tmp_path, "b")
    document = json.loads(good.read_text())
    out.write_text(json.dumps({**document, "bridge_url": BAD_URL}))
    site = tmp_path / "site"
    refused = edge_cli(site, "enroll-request", "--ticket", str(out), "--out", str(tmp_path / "b.request"))
    assert_one_line(refused, f"the ticket's bridge_url '{BAD_URL}' is not a URL")
    assert not (tmp_path / "b.request").exists()
    # a request made by an outbox that did not check: enroll-import explains, and changes nothing
    request_file = request(tmp_path, site, good, "b")
    pending = site / "identity" / "pending.json"
    pending.write_text(json.dumps({**json.loads(pending.read_text()), "bridge_url": BAD_URL}))
    answer = response(tmp_path, request_file)
    assert_one_line(edge_cli(site, "enroll-import", str(answer)), f"'{BAD_URL}' is not a URL")
    assert not (site / "identity" / "device.json").exists()
    assert (site / "identity" / "pending.key").exists()


def test_a_second_enroll_request_asks_for_the_same_key(tmp_path: Path) -> None:
    site = tmp_path / "site"
    first = request(tmp_path, site, ticket(tmp_path, "one"), "one")
    again = edge_cli(site, "enroll-request", "--ticket", str(ticket(tmp_path, "two")), "--out", str(tmp_path / "two.r"))
    assert again.returncode == 0, again.stderr
    imported = edge_cli(site, "enroll-import", str(response(tmp_path, first)), "--json")
    assert imported.returncode == 0, imported.stderr  # the bridge spent the first code on this key
    assert json.loads(imported.stdout)["name"] == "one"
    assert "the key made by the earlier enroll-request is kept" in again.stdout


def test_enroll_request_new_key_replaces_the_pending_one_and_says_so(tmp_path: Path) -> None:
    site = tmp_path / "site"
    first = request(tmp_path, site, ticket(tmp_path, "one"), "one")
    again = edge_cli(site, "enroll-request", "--ticket", str(ticket(tmp_path, "two")), "--out", str(tmp_path / "two.r"),
                     "--new-key")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "the key made by the earlier enroll-request is replaced" in again.stdout
    assert_one_line(edge_cli(site, "enroll-import", str(response(tmp_path, first))), "another key")


@pytest.mark.timeout(120)
def test_enroll_request_on_a_full_disk_fails_in_one_line_and_runs_again(tmp_path: Path) -> None:
    """It wrote its key in place (not whole): a full disk left an empty pending.key and a traceback, and every
    run after that died on the empty key (ValueError: Unable to load PEM file) until someone found --new-key."""
    first, second = ticket(tmp_path, "full"), ticket(tmp_path, "freed")
    with disk.small_disk(tmp_path / "disk", size="1m") as mount_point:
        site = mount_point / "site"
        filler = disk.fill(mount_point)
        out = tmp_path / "full.request"

        full = edge_cli(site, "enroll-request", "--ticket", str(first), "--out", str(out))

        assert_one_line(full, "No space left on device; run it again")
        assert not out.exists()
        assert [p.name for p in (site / "identity").iterdir()] == []  # no key half written

        filler.unlink()
        request_file = request(tmp_path, site, second, "freed")
        imported = edge_cli(site, "enroll-import", str(response(tmp_path, request_file)), "--json")
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout)["name"] == "freed"


@pytest.mark.timeout(120)
def test_a_pending_key_that_is_not_a_key_is_replaced_and_refused_at_import(tmp_path: Path) -> None:
    """An empty pending.key (left by an older version on a full disk or at a power cut) is replaced by a new
    key with a warning naming it; enroll-import refuses a damaged one in one line, not a traceback."""
    site = tmp_path / "site"
    earlier = request(tmp_path, site, ticket(tmp_path, "one"), "one")
    pending_key = site / "identity" / "pending.key"
    pending_key.write_bytes(b"")

    assert_one_line(edge_cli(site, "enroll-import", str(response(tmp_path, earlier))), "is not a readable key")
    again = edge_cli(site, "enroll-request", "--ticket", str(ticket(tmp_path, "two")), "--out", str(tmp_path / "two.r"))

    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert f"{pending_key}, the key of an earlier enroll-request, is not a readable key" in again.stderr
    assert "the key made by the earlier enroll-request is replaced" in again.stdout
    assert stat.S_IMODE(pending_key.stat().st_mode) == 0o600
    imported = edge_cli(site, "enroll-import", str(response(tmp_path, tmp_path / "two.r")), "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["name"] == "two"


def _backlog(site: Path, count: int) -> None:
    """`count` intents stored as the outbox's intake stores them."""
    conn = db.connect(site)
    try:
        now = time.time_ns() // 1_000_000
        body = b'{"to": "ops@example.com", "subject": "s", "text": "x"}'
        rows = [Admitted(f"bulk-{i:06d}", "hvac-ui", "email.send", body, 0, now, None, True) for i in range(count)]
        ops.commit_intakes(conn, rows, QueueLimits(), now)
    finally:
        conn.close()


def _imported(tmp_path: Path, bundle: Path, config: Path) -> Path:
    receipt = bundle.with_suffix(".receipt")
    done = bridge(tmp_path / "bridge", "import", str(bundle), "--config", str(config), "--receipt", str(receipt))
    assert done.returncode == 0, done.stderr
    return receipt


def _receipt_acks(receipt: Path) -> list[Ack]:
    body = Receipt.decode(signed.read(receipt.read_bytes(), typ=RECEIPT_TYPE, max_bytes=1 << 30).body)
    return [ack for message in body.acks for ack in decode_acks(message)]


@pytest.mark.timeout(300)
def test_the_bundle_after_a_receipt_confirms_every_result_the_receipt_brought(tmp_path: Path) -> None:
    """A bundle carries up to 50,000 intents but confirmed at most 20,000 results: each trip of a full bundle
    left 30,000 results the site had applied unconfirmed at the bridge, named again in every receipt and
    never purged, growing by as much per trip. Here 25,000 intents end at import (refused by policy)."""
    count = 25_000
    site = enrolled_site(tmp_path)
    _backlog(site, count)
    config = tmp_path / "bridge.toml"
    config.write_text(f'[tenants.{TENANT}.policy]\nkinds = ["sms.send"]\n')  # email.send refused: final at once

    first = edge_cli(site, "export", "--out", str(tmp_path / "one.bundle"), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["intents"] == count
    receipt = _imported(tmp_path, tmp_path / "one.bundle", config)
    assert {ack.state for ack in _receipt_acks(receipt)} == {AckState.REJECTED}
    applied = edge_cli(site, "import-receipt", str(receipt), "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["changed"] == count

    second = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--json")

    assert second.returncode == 0, second.stderr
    assert (json.loads(second.stdout)["intents"], json.loads(second.stdout)["confirms"]) == (0, count)
    assert _receipt_acks(_imported(tmp_path, tmp_path / "two.bundle", config)) == []  # nothing left to repeat


def test_the_request_that_used_a_code_is_answered_again_when_its_response_was_not_written(tmp_path: Path) -> None:
    """enroll-offline spends the code, then writes the response: an --out it could not write (a stick not
    mounted, a typo) left a device enrolled that no site could import, and the same request again was refused
    ("enrollment code unknown, used or expired"); a new ticket then enrolled a second device with the key."""
    site = tmp_path / "site"
    request_file = request(tmp_path, site, ticket(tmp_path, "s"), "s")
    unmounted = tmp_path / "not-mounted" / "s.response"

    failed = bridge(tmp_path / "bridge", "devices", "enroll-offline", str(request_file), "--out", str(unmounted))

    assert_one_line(failed, f"cannot write {unmounted}: No such file or directory")
    answered = response(tmp_path, request_file)  # the same request again
    lost = bridge(tmp_path / "bridge", "devices", "enroll-offline", str(request_file), "--out", str(tmp_path / "again"))
    assert lost.returncode == 0, lost.stderr  # and once more: a response lost on the way back
    imported = edge_cli(site, "enroll-import", str(answered), "--json")
    assert imported.returncode == 0, imported.stderr
    devices = json.loads(bridge(tmp_path / "bridge", "devices", "ls", "--json").stdout)
    assert [(d["device_id"], d["name"]) for d in devices] == [(json.loads(imported.stdout)["device_id"], "s")]


def _executed(bridge_dir: Path, state: EntryState, code: str = "") -> None:
    """What the bridge's executor does to every row queued in its ledger now: ends it in `state`."""

    async def run() -> None:
        store = open_store(StoreUrl.sqlite(bridge_dir), node="test-executor")
        await store.open()
        try:
            for entry in await store.ledger.claim(["email.send"], 100, time.time() + 60):
                await store.ledger.finish(entry, state, code, "", time.time(), "smtp")
        finally:
            await store.close()

    asyncio.run(run())


@pytest.mark.timeout(180)
def test_the_result_of_an_operators_retry_reaches_the_site_whose_confirm_was_on_its_way(tmp_path: Path) -> None:
    """The site applies attempt 1's failure from a receipt and confirms it in its next bundle; meanwhile the
    operator retried the intent and attempt 2 was delivered. That confirm confirmed attempt 2's result, which
    no receipt carried after: the site kept `failed` for an intent the bridge had delivered."""
    site = enrolled_site(tmp_path)
    identity = load_identity(site)
    assert identity is not None
    _backlog(site, 1)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n'
        'email_from = "alerts@example.com"\n'
    )
    assert edge_cli(site, "export", "--out", str(tmp_path / "one.bundle")).returncode == 0
    _imported(tmp_path, tmp_path / "one.bundle", config)
    _executed(tmp_path / "bridge", EntryState.FAILED, "smtp_refused")
    failed = tmp_path / "failed.receipt"
    assert bridge(tmp_path / "bridge", "receipt", identity.device_id, "--out", str(failed)).returncode == 0
    assert edge_cli(site, "import-receipt", str(failed)).returncode == 0
    assert stored_ids(site) == {"bulk-000000": "failed"}
    retried = bridge(tmp_path / "bridge", "intents", "retry", identity.device_id, "bulk-000000", "--operator", "ops")
    assert retried.returncode == 0, retried.stderr
    _executed(tmp_path / "bridge", EntryState.DELIVERED)

    assert edge_cli(site, "export", "--out", str(tmp_path / "two.bundle")).returncode == 0  # confirms attempt 1
    receipt = _imported(tmp_path, tmp_path / "two.bundle", config)

    assert [(a.id, a.state, a.attempt) for a in _receipt_acks(receipt)] == [("bulk-000000", AckState.DELIVERED, 2)]
    assert edge_cli(site, "import-receipt", str(receipt)).returncode == 0
    assert stored_ids(site) == {"bulk-000000": "delivered"}


def test_a_bundle_whose_directory_could_not_be_synced_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle is renamed into place, then its directory synced: when that sync failed (a stick pulled out,
    an I/O error) export said "nothing was marked sent" and left the bundle there, whose intents could then
    be cancelled or expire on the site while the bridge ran them."""
    site = enrolled_site(tmp_path)
    _backlog(site, 3)
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
    _backlog(site, 20_000)
    first = edge_cli(site, "export", "--out", str(tmp_path / "one.bundle"), "--max-bytes", "3M")
    again = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--max-bytes", "3M", "--json")

    assert first.returncode == 0, first.stderr
    left_out = json.loads(again.stdout)["left_out"]
    assert 0 < left_out < 20_000
    assert f"{left_out} intents did not fit in this bundle" in first.stderr  # the same ones, exported again now
    assert "after this one's receipt is applied" in first.stderr
    assert "export again for them" not in first.stderr


def test_a_ticket_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """A ticket holds the one-time code in clear; it was written 0644, for any local user to read and enroll."""
    made = ticket(tmp_path, "secret")
    assert json.loads(made.read_text())["code"]
    assert stat.S_IMODE(made.stat().st_mode) == 0o600


@pytest.mark.timeout(120)
def test_import_counts_every_final_result_its_receipt_carries(tmp_path: Path) -> None:
    """The receipt carries every result the device has not confirmed, but import counted only the results of
    the bundle just imported: "receipt with 0 final results" for a receipt that brought two."""
    site = enrolled_site(tmp_path)
    _backlog(site, 2)
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n'
        'email_from = "alerts@example.com"\n'
    )
    assert edge_cli(site, "export", "--out", str(tmp_path / "one.bundle")).returncode == 0
    accepted = _imported(tmp_path, tmp_path / "one.bundle", config)
    assert edge_cli(site, "import-receipt", str(accepted)).returncode == 0  # both forwarded: not in a bundle again
    _executed(tmp_path / "bridge", EntryState.DELIVERED)
    two = edge_cli(site, "export", "--out", str(tmp_path / "two.bundle"), "--json")
    assert two.returncode == 0 and json.loads(two.stdout)["intents"] == 0, two.stderr

    done = bridge(tmp_path / "bridge", "import", str(tmp_path / "two.bundle"), "--config", str(config),
                  "--receipt", str(tmp_path / "two.receipt"), "--json")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["final_results_in_receipt"] == 2
    assert len(_receipt_acks(tmp_path / "two.receipt")) == 2
