"""Files carried between sites by hand (bundles, receipts, enrollment files): written whole, read bounded.

OSError goes to the caller, which maps it to its own package's errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from intent_contract.errors import DecodeError


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: written aside in the same directory, synced, renamed."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with aside.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        aside.replace(path)
    finally:
        aside.unlink(missing_ok=True)


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; DecodeError when it holds more than `max_bytes` (judged before reading it)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DecodeError(f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit")
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we looked
        raise DecodeError(f"{path}: over the {max_bytes:,}-byte limit")
    return data
