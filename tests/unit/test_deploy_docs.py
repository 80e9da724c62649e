"""docs/deploy.md: every command line of ours in its shell blocks is one our CLIs accept, and the
files it tells an operator to install are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli_check import check_command_line, command_lines_in, shell_lines

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/deploy.md"


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.DOTALL)


def ours() -> list[list[str]]:
    return [argv for block in blocks() for argv in command_lines_in(block)]


def test_the_doc_shows_enrollment_on_both_kinds_of_host() -> None:
    enrolls = [argv for argv in ours() if "enroll" in argv]
    assert len(enrolls) >= 2  # systemd and compose
    assert any(
        argv[:3] == ["/opt/edge-outbox/bin/edge-outbox", "--config", "/etc/edge-outbox/config.toml"] for argv in enrolls
    )


@pytest.mark.parametrize("argv", [pytest.param(a, id=" ".join(a[:3])) for a in ours()])
def test_command_lines_are_accepted_by_our_clis(argv: list[str]) -> None:
    check_command_line(argv)


def test_installed_files_come_from_the_repository() -> None:
    sources = {
        word
        for block in blocks()
        for words in shell_lines(block, prefix="install")
        for word in words
        if word.startswith(("deploy/", "compose/"))
    }
    assert sources and all((ROOT / source).exists() for source in sources), sources
