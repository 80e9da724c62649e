"""What a CLI run in a real process must have printed: one clean error line, or a bug's traceback."""

from __future__ import annotations

import os
import pty
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


def on_a_terminal(args: list[str], timeout: float = 120) -> str:
    """Run a command with stdout and stderr on one pseudo-terminal, as a person runs it; what it wrote there
    (newlines as the terminal writes them: `\\r\\n` -> `\\n`). Fails unless it exits 0."""
    main, side = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=side, stderr=side)
    finally:
        os.close(side)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return b"".join(chunks).decode().replace("\r\n", "\n")
