"""The bridge's offline keys on a real disk (cloud_bridge/offline_keys.py): made once, whole, and durable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cloud_bridge.offline_keys import keys_dir, load_or_create


@pytest.mark.timeout(60)
def test_new_offline_keys_are_synced_into_place_before_they_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices pin these keys from the first ticket or enrollment on. The keys were written aside and renamed
    into place, but neither directory was synced: a power cut could undo the rename, and the next start made
    new keys; every device that pinned the first ones had its bundles refused ("encrypted to another
    bridge's key") and its receipts refused, until someone visited it to enroll it again."""
    data_dir = tmp_path / "bridge"
    synced: list[tuple[str, list[str]]] = []  # (directory, its entries) each time a directory was synced
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            directory = Path(os.readlink(f"/proc/self/fd/{fd}"))
            synced.append((directory.name, sorted(p.name for p in directory.iterdir())))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    keys = load_or_create(data_dir)

    directory = keys_dir(data_dir)
    assert (data_dir.name, [directory.name]) in synced  # the rename into place
    assert any(entries == sorted(p.name for p in directory.iterdir()) for _, entries in synced)  # the files
    assert load_or_create(data_dir).public == keys.public  # made once
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}
