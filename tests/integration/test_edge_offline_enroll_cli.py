"""Offline enrollment as the technician runs it, without a running bridge (tests.support.offline_site): the real
`cloud-bridge devices enroll-ticket` / `enroll-offline` on a bridge data dir, the real `edge-outbox`
commands on a site's data dir, files between them. What must be refused is refused in one line, before
anything is spent or lost."""

from __future__ import annotations

import base64
import json
import resource
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from intent_contract import sealed, signed
from intent_contract.device_token import generate_private_key_pem
from intent_contract.offline_wire import (
    ENROLL_FILE_BYTES,
    ENROLL_REQUEST_TYPE,
    ENROLL_RESPONSE_TYPE,
    RECEIPT_TYPE,
    EnrollRequest,
    Receipt,
)
from tests.support import disk
from tests.support.cli_output import assert_one_line
from tests.support.offline_site import bridge, enrolled_site, request, response, ticket
from tests.support.sneakernet import edge_args, edge_cli
from tests.support.stack import TENANT

FORGED_KID = "x\x1b]0;owned\x07\nreceipt r9: 1 delivered"


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


def test_a_ticket_whose_signing_key_is_not_a_p256_key_is_refused_before_a_request_is_made(tmp_path: Path) -> None:
    """Any text holding "PUBLIC KEY" was pinned as the bridge's receipt key: the site enrolled, and every receipt
    was then refused as one that does not verify."""
    good = json.loads(ticket(tmp_path, "k").read_text())
    bad = tmp_path / "bad.ticket"
    for key in ("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n", "PUBLIC KEY"):
        bad.write_text(json.dumps({**good, "bridge": {**good["bridge"], "signing_key": key}}))
        refused = edge_cli(tmp_path / "site", "enroll-request", "--ticket", str(bad), "--out", str(tmp_path / "k.r"))
        assert_one_line(refused, "the bridge's offline keys are malformed (key_id, recipient, signing_key)")
        assert not (tmp_path / "k.r").exists()


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


def test_a_ticket_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """A ticket holds the one-time code in clear; it was written 0644, for any local user to read and enroll."""
    made = ticket(tmp_path, "secret")
    assert json.loads(made.read_text())["code"]
    assert stat.S_IMODE(made.stat().st_mode) == 0o600


def test_a_request_whose_key_cannot_be_loaded_is_refused_in_one_line_and_spends_nothing(tmp_path: Path) -> None:
    """A key pyjwt reads as an OpenSSH key of a type cryptography does not know raised UnsupportedAlgorithm, which
    no handler took: `enroll-offline` printed a traceback."""
    made = json.loads(ticket(tmp_path, "s").read_text())
    odd_key = "ecdsa-sha2-x " + base64.b64encode(struct.pack("!I", 12) + b"ecdsa-sha2-x").decode()
    body = EnrollRequest(made["code"], odd_key, made["bridge"]["key_id"], int(time.time() * 1000)).encode()
    document = signed.sign(body, generate_private_key_pem(), typ=ENROLL_REQUEST_TYPE, kid="device")
    odd = tmp_path / "odd.request"
    odd.write_bytes(sealed.seal(document, made["bridge"]["recipient"]))

    refused = bridge(tmp_path / "bridge", "devices", "enroll-offline", str(odd), "--out", str(tmp_path / "odd.r"))

    assert_one_line(refused, "the enrollment request is not signed by the key it enrolls")
    devices = json.loads(bridge(tmp_path / "bridge", "devices", "ls", "--json").stdout)
    assert devices == []
