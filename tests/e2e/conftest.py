"""Fixtures for the end-to-end tests: a whole stack on loopback, always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Stack


@pytest.fixture
def stack(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[Stack]:
    """A bridge (started), an SMTP sink and an enrolled edge data dir (not started)."""
    s = Stack(tmp_path, server_cert_files)
    try:
        s.bridge.start()
        s.enroll()
        yield s
    finally:
        s.close()
