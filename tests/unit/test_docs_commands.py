"""Every page's command lines name commands and options our CLIs have: README.md and docs/*.md, in their
shell blocks and in the text (`cloud-bridge intents ls --state failed`). Synopses are read as written
(`[--limit N]`, `retry|cancel`, `--sort id|tenant`): each alternative command must exist and every option
named must be one of that command's, values are not checked (docs/deploy.md's lines are, in full, by
test_deploy_docs). And what docs/edge.md says takes `--json` does."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.support.cli_check import PROGRAMS, program_index

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _lines(text: str) -> Iterator[str]:
    """Shell lines of the code blocks (continuations joined, comments dropped) and inline code spans."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            yield re.sub(r"(^|\s)#\s.*$", "", line)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for paragraph in prose.split("\n\n"):
        yield from (" ".join(span.split()) for span in paragraph.replace("``", "").split("`")[1::2])


def command_lines(page: Path) -> Iterator[list[str]]:
    for line in _lines(page.read_text()):
        first = re.split(r";|\s(?:&&|\|\||\||>|2>|&)(?:\s|$)", line.replace("[", " ").replace("]", " "))[0]
        try:
            words = shlex.split(first)
        except ValueError:  # a quote opened in a synopsis
            words = first.split()
        start = program_index(words)
        if start is not None:
            yield words[start:]


def unknown_names(argv: list[str]) -> list[str]:
    """The (sub)commands and options in `argv` that its program does not have, read as a synopsis."""
    commands: list[click.Command] = [PROGRAMS[Path(argv[0]).name]]
    wrong: list[str] = []
    for word in argv[1:]:
        command = commands[-1]
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            if not any(name in p.opts or name in p.secondary_opts for c in commands for p in c.params):
                wrong.append(f"{name} (not an option of {command.name})")
        elif isinstance(command, click.Group) and re.fullmatch(r"[a-z][a-z0-9|/-]*", word):
            found = [command.commands.get(alternative) for alternative in re.split(r"[|/]", word)]
            if None in found:
                wrong.append(f"{word} (not a command of {command.name})")
                return wrong
            commands.append(found[0])  # type: ignore[arg-type]
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_option_a_page_names_exists(page: Path) -> None:
    wrong = {" ".join(argv): found for argv in command_lines(page) if (found := unknown_names(argv))}
    assert wrong == {}


def test_the_check_finds_an_option_on_the_wrong_command() -> None:
    assert unknown_names(["cloud-bridge", "intents", "ls", "--stuck"]) == ["--stuck (not an option of ls)"]
    assert unknown_names(["edge-outbox", "rotate-key", "--json"]) == ["--json (not an option of rotate-key)"]
    assert unknown_names(["cloud-bridge", "devices", "ls|lst"]) == ["ls|lst (not a command of devices)"]
    assert unknown_names(["cloud-bridge", "intents", "retry|cancel", "DEVICE", "ID", "--operator", "bob"]) == []


def test_the_edge_ops_commands_that_take_json_are_the_ones_the_page_says() -> None:
    text = (ROOT / "docs" / "edge.md").read_text()
    table = text.split("## Ops commands", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| `edge-outbox ([a-z-]+)", table, re.M))
    listed |= set(re.findall(r"`(?:edge-outbox )?([a-z-]+) FILE`", table))
    sentence = re.search(r"^All (?:but (.*?) )?take `--json`", text, re.M)
    assert sentence is not None and len(listed) >= 10
    without = set(re.findall(r"`([a-z-]+)`", sentence.group(1) or ""))
    edge = PROGRAMS["edge-outbox"]
    assert isinstance(edge, click.Group)
    takes = {name for name in listed if any("--json" in p.opts for p in edge.commands[name].params)}
    assert (listed - takes, takes) == (without, listed - without)
