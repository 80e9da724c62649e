"""Files written whole (bundles, receipts, enrollment files, the device's next key) and read bounded.

OSError goes to the caller, which maps it to its own package's errors.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from intent_contract.errors import DecodeError


def write_atomic(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write `data` to `path` whole or not at all: written aside in the same directory, synced, renamed.

    `mode` is the new file's (less the umask): 0o600 for a private key. The directory is synced after
    the rename, so a power cut cannot bring back the file that was there before.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        aside.unlink(missing_ok=True)  # left by a killed process that had our pid: its mode may not be `mode`
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        aside.replace(path)
        fsync_directory(path.parent)
    finally:
        aside.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Make the renames and unlinks done in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (vfat on a USB stick, some network ones) cannot sync a directory; there is
        # nothing more to be done there, and the file itself is synced.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; DecodeError when it holds more than `max_bytes` (judged before reading it)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DecodeError(f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit")
    with path.open("rb") as f:
        # Sized by the file, not the limit: read(max_bytes + 1) allocated the whole limit (1 GiB with
        # --max-bytes 1G), which a box without memory overcommit refuses whatever the file's size.
        data = f.read(size + 1)
        if len(data) > size:  # it grew while we looked: read on up to the limit
            data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise DecodeError(f"{path}: over the {max_bytes:,}-byte limit")
    return data
