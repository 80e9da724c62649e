"""What a CLI run in a real process must have printed: one clean error line, or a bug's traceback."""

from __future__ import annotations

import subprocess


def assert_one_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("Error: ")
    assert text in result.stderr


def assert_traceback(result: subprocess.CompletedProcess[str], last_line: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(last_line), result.stderr
