"""Parse a command line written in a deployment file (compose, Dockerfile, systemd unit, README) as
our CLIs would: the program, each (sub)command, every option and its value must be accepted.

A file's paths do not exist where the test runs, so options that require an existing path are
checked for everything but that.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import PurePath

import click

from cloud_bridge.cli import main as bridge_cli
from edge_outbox.cli import main as edge_cli

PROGRAMS: dict[str, click.Command] = {"edge-outbox": edge_cli, "cloud-bridge": bridge_cli}


@contextmanager
def _paths_need_not_exist(command: click.Command) -> Iterator[None]:
    changed = [p.type for p in command.params if isinstance(p.type, click.Path) and p.type.exists]
    for path_type in changed:
        path_type.exists = False
    try:
        yield
    finally:
        for path_type in changed:
            path_type.exists = True


def check_command_line(argv: Sequence[str] | str) -> None:
    """Raise AssertionError naming the problem unless `argv` is a command line our CLIs accept."""
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    program = PurePath(args[0]).name
    if program not in PROGRAMS:
        raise AssertionError(f"{program!r} is not one of our programs ({', '.join(PROGRAMS)})")
    command, name, rest = PROGRAMS[program], program, args[1:]
    try:
        while True:
            with _paths_need_not_exist(command):
                ctx = click.Context(command, info_name=name)
                # The base class's parse_args leaves a group's subcommand and its arguments in `rest`.
                rest = click.Command.parse_args(command, ctx, rest)
            if not isinstance(command, click.Group):
                return
            found, sub, rest = command.resolve_command(ctx, rest)
            assert found is not None and sub is not None
            command, name = sub, found
    except click.ClickException as exc:
        raise AssertionError(f"`{shlex.join(args)}`: {exc.format_message()}") from None


_OPERATORS = frozenset(";&|<>()")


def shell_lines(text: str, *, prefix: str = "") -> list[list[str]]:
    """The words of each command line in shell text (a code block, a file's comments) that starts with
    `prefix`: continued lines joined, comment marks dropped, up to the end of the first command (`;`,
    `&&`, `|`, a redirection)."""
    found = []
    for raw in re.sub(r"\\\n[\s#]*", " ", text).splitlines():
        line = raw.strip().lstrip("#").strip()
        if not line or not line.startswith(prefix):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars="".join(_OPERATORS))
        lexer.whitespace_split = True
        tokens = list(lexer)
        end = next((i for i, token in enumerate(tokens) if set(token) <= _OPERATORS), len(tokens))
        found.append(tokens[:end])
    return found


def program_index(words: Sequence[str]) -> int | None:
    """Where one of our programs starts in a command line's words (after `docker compose run SERVICE`,
    `runuser -u USER --`): its name, bare or in a bin/ directory, and not the value of an option."""
    for i, word in enumerate(words):
        path = PurePath(word)
        is_program = path.name in PROGRAMS and (word == path.name or path.parent.name == "bin")
        if is_program and not (i and words[i - 1].startswith("-") and words[i - 1] != "--"):
            return i
    return None


def command_lines_in(text: str, *, prefix: str = "") -> list[list[str]]:
    """Our command lines in shell text: see shell_lines; each from the program's name on."""
    lines = [(words, program_index(words)) for words in shell_lines(text, prefix=prefix)]
    return [words[start:] for words, start in lines if start is not None]
