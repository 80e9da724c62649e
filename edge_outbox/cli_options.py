"""The options and helpers every `edge-outbox` command module shares (cli, cli_queue, cli_offline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_outbox.cli_db import connection
from edge_outbox.settings import DEFAULT_DATA_DIR
from edge_outbox.states import State
from intent_contract.timefmt import parse_duration

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

STATES = click.Choice([s.value for s in State])


def data_dir_option(fn: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        envvar="EDGE_OUTBOX_DATA_DIR",
        show_default=True,
        show_envvar=True,
        help="Directory holding the outbox database.",
    )(fn)


def max_offline_option(fn: F) -> F:
    return click.option(
        "--max-offline",
        default="1h",
        show_default=True,
        callback=duration_seconds,
        help="Without a link to the bridge for longer than this, the outbox counts as unhealthy.",
    )(fn)


def status_max_offline_option(fn: F) -> F:
    """`status`'s: given none, it judges by the running outbox's own (its /healthz's rule), 1 h with none running;
    its help said `[default: 1h]` alone."""
    return click.option(
        "--max-offline",
        default="1h",
        show_default="the running outbox's --max-offline; with none running, 1h",
        callback=duration_seconds,
        help="Without a link to the bridge for longer than this, the outbox counts as unhealthy.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def duration_seconds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def write_op(data_dir: Path, fn: Callable[..., T], *args: Any) -> T:
    """Run one ops function in its own transaction (the running outbox sees the change within a second)."""
    with connection(data_dir) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result
