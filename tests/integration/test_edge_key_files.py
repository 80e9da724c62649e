"""`edge-outbox rotate-key`'s files on a real disk: the next key is whole or absent, and durable once used."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from edge_outbox import key_rotation
from edge_outbox.identity import Identity, identity_dir, key_file, save_identity
from intent_contract import signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.offline_wire import KEY_ROTATION_TYPE, NEW_KEY_TYPE, NewKey
from tests.support import disk
from tests.support.https_stub import https_answering

DEVICE_ID = "dev-1"
MAX = 16 * 1024


def _enrolled(data_dir: Path) -> None:
    """An identity as offline enrollment leaves it (no bridge address: rotate-key proposes in a file)."""
    identity = Identity(DEVICE_ID, "acme", "boiler-7", "bridge.invalid", 8883, "", "cloud-bridge")
    save_identity(data_dir, identity, generate_private_key_pem(), b"", None)


def _rotate_key(data_dir: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "edge_outbox", "rotate-key", "--offline", "--data-dir", str(data_dir)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _proposed_key(data_dir: Path) -> str:
    """The next public key rotation.doc proposes, checked against both signatures."""
    outer = signed.read((identity_dir(data_dir) / "rotation.doc").read_bytes(), typ=KEY_ROTATION_TYPE, max_bytes=MAX)
    inner = signed.read(
        signed.verify(outer, public_key_pem(key_file(data_dir).read_bytes())), typ=NEW_KEY_TYPE, max_bytes=MAX
    )
    body = NewKey.decode(inner.body)
    signed.verify(inner, body.public_key)
    return body.public_key


@pytest.mark.timeout(60)
def test_a_next_key_that_is_not_a_key_is_replaced_not_a_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "edge"
    _enrolled(data_dir)
    next_key = identity_dir(data_dir) / "next.key"
    next_key.write_bytes(b"")  # what a rotate-key cut short between creating the file and writing it left

    result = _rotate_key(data_dir)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{next_key} is not a readable key" in result.stderr  # the operator is told it was replaced
    assert _proposed_key(data_dir) == public_key_pem(next_key.read_bytes())
    assert stat.S_IMODE(next_key.stat().st_mode) == 0o600


@pytest.mark.timeout(60)
def test_rotate_key_on_a_full_disk_leaves_no_next_key_and_runs_again(tmp_path: Path) -> None:
    with disk.small_disk(tmp_path / "disk", size="1m") as mount_point:
        data_dir = mount_point / "edge"
        _enrolled(data_dir)
        filler = disk.fill(mount_point)

        full = _rotate_key(data_dir)

        assert full.returncode == 1
        assert "Traceback" not in full.stderr
        assert full.stderr.strip().splitlines() == [
            f"Error: cannot write the next key {identity_dir(data_dir) / 'next.key'}: No space left on device; "
            "run it again"
        ]
        assert sorted(p.name for p in identity_dir(data_dir).iterdir()) == ["device.json", "device.key"]

        filler.unlink()
        again = _rotate_key(data_dir)

        assert again.returncode == 0, again.stderr
        assert _proposed_key(data_dir) == public_key_pem((identity_dir(data_dir) / "next.key").read_bytes())


@pytest.mark.timeout(60)
def test_switching_to_the_next_key_syncs_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "edge"
    _enrolled(data_dir)
    directory = identity_dir(data_dir)
    new_key = generate_private_key_pem()
    (directory / "next.key").write_bytes(new_key)
    synced: list[bytes] = []  # device.key's content each time the identity directory was synced
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and os.path.samestat(os.fstat(fd), directory.stat()):
            synced.append(key_file(data_dir).read_bytes())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    key_rotation.switch_to_next_key(data_dir)

    # A power cut after the device signed with the new key must not bring the old one back.
    assert synced == [new_key]
    assert not (directory / "next.key").exists()


@pytest.mark.timeout(60)
def test_an_identity_is_synced_file_by_file_before_device_json_marks_it_enrolled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """enroll and enroll-import wrote device.key in place and device.json after it, neither synced: a power
    cut could keep device.json (enrolled) beside an empty device.key, the code spent at the bridge and the
    device unable to sign a token or a bundle."""
    data_dir = tmp_path / "edge"
    synced: list[str] = []  # what each fsync made durable: a file's name, or a directory's entries
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append("dir:" + ",".join(sorted(p.name for p in path.iterdir())))
        else:
            synced.append(path.name.removeprefix(".").split(".")[0] + "." + path.name.split(".")[2])
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    key = generate_private_key_pem()

    save_identity(data_dir, Identity(DEVICE_ID, "acme", "boiler-7", "bridge.invalid", 8883, "", "cloud-bridge"),
                  key, b"", None)  # fmt: skip

    assert key_file(data_dir).read_bytes() == key
    assert synced.index("device.key") < synced.index("device.json")  # the key is whole before it counts
    assert synced[-1] == "dir:device.json,device.key"  # and device.json's name is durable


@pytest.mark.parametrize(
    ("status", "answer", "said"),
    [
        (503, b'{"error": "store_unavailable", "detail": "the bridge cannot use its store now; try again later"}',
         "the bridge cannot use its store now"),
        (502, b"<html>Bad Gateway</html>", "Bad Gateway"),  # a balancer in front of a bridge that restarts
        (429, b'{"error": "rate_limited", "detail": "slow down"}', "slow down"),
    ],
)  # fmt: skip
def test_rotate_key_against_a_bridge_that_cannot_answer_now_says_run_it_again(
    tmp_path: Path, ca: trustme.CA, status: int, answer: bytes, said: str
) -> None:
    """A bridge restarting behind its balancer (502), its database down (503) or busy (429) was "the bridge
    refused the key rotation (HTTP 503)", as if for good: the operator took the device's key for one the bridge
    would not have. Nothing was refused: running it again proposes the same next key."""
    with https_answering(ca, status, answer) as port:
        url = f"https://127.0.0.1:{port}"
        identity = Identity(DEVICE_ID, "acme", "boiler-7", "127.0.0.1", 8883, url, "cloud-bridge")
        current = generate_private_key_pem()
        save_identity(tmp_path, identity, current, ca.cert_pem.bytes(), None)
        args = [sys.executable, "-m", "edge_outbox", "rotate-key", "--data-dir", str(tmp_path)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert f"the bridge could not take the key rotation now (HTTP {status})" in result.stderr, result.stderr
    assert said in result.stderr and "run it again" in result.stderr and "refused" not in result.stderr
    assert key_file(tmp_path).read_bytes() == current  # still signing with its current key
    assert (identity_dir(tmp_path) / "next.key").exists()  # proposed again by the next run


def test_rotate_key_against_a_bridge_older_than_key_rotation_says_to_upgrade_it(tmp_path: Path, ca: trustme.CA) -> None:
    """A bridge from before key rotation has no /v1/rotate-key: aiohttp answers `404: Not Found` (text/plain), as
    a bridge of 30 Nov 2026 did. The edge said "the bridge refused the key rotation (HTTP 404): Not Found", as if
    this device's key were refused; the bridge only does not know the request."""
    with https_answering(ca, 404, b"404: Not Found") as port:
        url = f"https://127.0.0.1:{port}"
        identity = Identity(DEVICE_ID, "acme", "boiler-7", "127.0.0.1", 8883, url, "cloud-bridge")
        current = generate_private_key_pem()
        save_identity(tmp_path, identity, current, ca.cert_pem.bytes(), None)
        args = [sys.executable, "-m", "edge_outbox", "rotate-key", "--data-dir", str(tmp_path)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "refused" not in result.stderr, result.stderr
    assert "does not take key rotations" in result.stderr and "upgrade the bridge" in result.stderr, result.stderr
    assert key_file(tmp_path).read_bytes() == current
    assert (identity_dir(tmp_path) / "next.key").exists()
