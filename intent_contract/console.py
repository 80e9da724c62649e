"""How both CLIs print text for people: rich tables that show stored text as it is.

Rows in a table hold what devices, apps and files sent (an app or kind level of a refused topic, a
detail, a name). rich parses markup in what it prints: `[link=URL]` wrote an OSC 8 hyperlink to the
terminal, `[blink red]` styled the row, and a lone `[/x]` raised MarkupError. So markup and highlighting
are off, and `cell` writes control characters out (`intent_contract.readable`): an ESC or a newline in a
value can neither drive the terminal nor forge a row.
"""

from __future__ import annotations

from rich.console import Console

from intent_contract.readable import readable


def plain_console() -> Console:
    """A console that prints text as it is: no markup (a device's text may hold `[/x]`, which rich takes as
    a closing tag and fails on) and no highlighting; a terminal's width, or a wide one for a pipe (rich
    would squeeze the tables into 80 columns)."""
    console = Console(markup=False, highlight=False)
    return console if console.is_terminal else Console(width=200, markup=False, highlight=False)


def cell(value: object) -> str:
    """A value as shown in a table or a `key: value` line: its text with control characters written out."""
    return readable(str(value))
