"""Fixtures for the end-to-end tests: a whole stack on loopback, always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, running_stack


@pytest.fixture
def stack(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[Stack]:
    """A bridge (started), an SMTP sink and an enrolled edge data dir (not started)."""
    with running_stack(tmp_path, server_cert_files) as s:
        yield s
