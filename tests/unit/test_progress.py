"""intent_contract.progress: the last figures a command reported are on the last line, and that line ends,
on a terminal and in a log alike, however short of its total the command stopped."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from intent_contract.progress import progress_line

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows: each line as the last carriage return left it."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


@pytest.mark.timeout(10)
def test_a_terminal_line_stopped_short_of_its_total_is_ended_for_the_next_message() -> None:
    out = Terminal()
    with progress_line("results", out) as progress:
        for done in (0, 600, 1_150):
            progress(done, 1_200)
    out.write("receipt written\n")

    assert screen(out.getvalue()) == ["results: 1,150/1,200", "receipt written", ""]


@pytest.mark.timeout(10)
def test_a_terminal_line_that_reached_its_total_is_ended_once() -> None:
    out = Terminal()
    with progress_line("admitted", out) as progress:
        progress(600, 1_200)
        progress(1_200, 1_200)
    assert screen(out.getvalue()) == ["admitted: 1,200/1,200", ""]


@pytest.mark.timeout(10)
def test_a_log_ends_with_the_last_figures_not_the_last_tenth() -> None:
    out = io.StringIO()
    with progress_line("exported intents", out) as progress:
        for done in range(0, 9_501, 500):
            progress(done, 12_000)
    lines = out.getvalue().splitlines()
    assert lines[-1] == "exported intents: 9,500/12,000"
    assert len(lines) == len(set(lines)) <= 11  # a tenth at a time, the last figures once


@pytest.mark.timeout(10)
def test_a_log_that_reached_its_total_shows_it_once_and_nothing_reported_shows_nothing() -> None:
    out = io.StringIO()
    with progress_line("admitted", out) as progress:
        progress(1_200, 1_200)
    with progress_line("results", out):
        pass
    assert out.getvalue() == "admitted: 1,200/1,200\n"


@pytest.mark.timeout(10)
def test_the_line_is_ended_when_the_command_fails_midway() -> None:
    out = Terminal()

    def import_that_fails() -> None:
        with progress_line("admitted", out) as progress:
            progress(300, 1_200)
            raise RuntimeError("store_error")

    with pytest.raises(RuntimeError):
        import_that_fails()
    assert out.getvalue().endswith("admitted: 300/1,200\n")


def _calls_outside_with(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    in_with = {
        id(item.context_expr)
        for node in ast.walk(tree)
        if isinstance(node, ast.With | ast.AsyncWith)
        for item in node.items
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "progress_line"
        and id(node) not in in_with
    ]


@pytest.mark.timeout(30)
def test_every_command_ends_its_progress_line() -> None:
    """A progress line passed as a bare callback is never ended: `intents purge`, whose total is counted when it
    starts, ends short of it when rows change meanwhile, and its summary then ran into the progress line."""
    sources = [
        p for package in ("cloud_bridge", "edge_outbox", "intent_contract") for p in (ROOT / package).rglob("*.py")
    ]
    callers = {str(p.relative_to(ROOT)): _calls_outside_with(p) for p in sources if "progress_line(" in p.read_text()}
    assert len(callers) >= 3
    assert {p: lines for p, lines in callers.items() if lines and not p.endswith("progress.py")} == {}
