"""What both programs' command lines share: arguments must be UTF-8 text; a file to write must be named.

Python keeps the bytes of an argument it could not decode as lone surrogates; such an argument (a
device id, an app name, a kind) failed later in a store's driver as a UnicodeEncodeError traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from intent_contract.readable import readable


class TextArgsGroup(click.Group):
    """A command group that refuses, in one line and before any command runs, an argument that is not UTF-8."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                raise click.UsageError(f"argument '{readable(arg)}' is not UTF-8 text", ctx) from None
        return super().parse_args(ctx, args)


class FileToWrite(click.Path):
    """A file a command writes (a bundle, a receipt, an enrollment file): refused when empty. `--out "$FILE"`
    with the variable unset named the current directory (`Path("")` is `.`), which click's directory check does
    not see: the atomic write failed after the work was done, a ValueError traceback."""

    what = "file"

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value:
            self.fail(f"an empty path names no {self.what}", param, ctx)
        return super().convert(value, param, ctx)


class DirectoryToWrite(FileToWrite):
    """A directory a command writes files into: refused when empty (`cloud-bridge dev-certs "$DIR"`, the variable
    unset, wrote a CA key and a server key into the current directory)."""

    what = "directory"

    def __init__(self) -> None:
        click.Path.__init__(self, file_okay=False, path_type=Path)
