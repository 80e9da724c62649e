"""What both programs' command lines share: arguments must be UTF-8 text.

Python keeps the bytes of an argument it could not decode as lone surrogates; such an argument (a
device id, an app name, a kind) failed later in a store's driver as a UnicodeEncodeError traceback.
"""

from __future__ import annotations

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
