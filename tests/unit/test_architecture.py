"""The import rules in pyproject.toml ([tool.importlinter]) hold, and they bite: a wrong import breaks the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("intent_contract", "edge_outbox", "cloud_bridge")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # ahead of the editable install on sys.path
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contracts, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("edge_outbox/states.py", "import sqlite3", "Pure cores import no I/O"),
        ("cloud_bridge/policy.py", "import time", "Pure cores import no I/O"),
        ("intent_contract/codec.py", "from intent_contract import sqlite_writer", "Pure cores import no I/O"),
        ("edge_outbox/forwarder.py", "import cloud_bridge.errors", "The edge and the bridge never import each other"),
        ("intent_contract/names.py", "import edge_outbox.errors", "The shared contract imports neither side"),
        ("cloud_bridge/outcome.py", "import asyncio", "Pure cores import no I/O"),
        ("cloud_bridge/integrations/sms.py", "import aiohttp", "Integrations share no client library"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
