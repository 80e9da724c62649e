"""Binaries and services a test needs: skip without them, except under CI, where a skip is a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    """Skip the test for want of something; under CI (OUTBOX_REQUIRE_SERVICES=1) fail it instead."""
    if os.environ.get("OUTBOX_REQUIRE_SERVICES") == "1":
        pytest.fail(message + "; OUTBOX_REQUIRE_SERVICES=1 turns this skip into a failure")
    pytest.skip(message)


def require_binary(name: str, install: str = "apt-get install mosquitto mosquitto-clients") -> str:
    """Path of `name`; skips the test without it, or fails under CI (OUTBOX_REQUIRE_SERVICES=1)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        unavailable(f"{name} is not installed ({install})")
    return path
