"""The `edge-outbox` commands that read and steer the queue, also while the outbox runs: status, ls, show,
retry, cancel, purge. Added to the group by edge_outbox.cli."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from edge_outbox import db, lock, offline_ops, ops, paced, retention
from edge_outbox.cli_db import connection
from edge_outbox.cli_format import (
    counted,
    now_ms,
    print_json,
    print_row,
    print_status,
    print_table,
    report_problems,
    row_json,
    status_report,
)
from edge_outbox.cli_options import (
    STATES,
    data_dir_option,
    duration_seconds,
    json_option,
    status_max_offline_option,
    write_op,
)
from edge_outbox.identity import load_identity
from edge_outbox.states import FINAL, RETRYABLE, State
from intent_contract.timefmt import format_age


@click.command()
@data_dir_option
@status_max_offline_option
@json_option
def status(data_dir: Path, max_offline: float, as_json: bool) -> None:
    """Counts per state, bytes used, the oldest pending intent, the link and whether intake is held.

    Exits 1 when unhealthy (revoked, intake paused, no link for longer than --max-offline, in attach mode no
    connection to the site broker for longer than 60 s or --max-offline, the running outbox's heartbeat over
    60 s old), 0 otherwise.
    """
    identity = load_identity(data_dir)
    with connection(data_dir) as conn:
        summary = ops.summary(conn)
        free = db.free_bytes(conn)
        revoked = identity is not None and offline_ops.revocation(conn, identity.device_id) is not None
    running = lock.running(data_dir)  # and what it recorded last (the link, intake): {} when none runs
    own = (running or {}).get(lock.MAX_OFFLINE_KEY)
    given = click.get_current_context().get_parameter_source("max_offline") is not ParameterSource.DEFAULT
    if not given and isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
        max_offline = float(own)  # none given to status: the running outbox's, by which its /healthz judges
    report = status_report(summary, running or {}, identity, running, data_dir, free)
    report["problems"] = report_problems(running or {}, max_offline, revoked=revoked)
    if as_json:
        print_json(report)
    else:
        print_status(report)
    if report["problems"]:
        sys.exit(1)


@click.command(name="ls")
@data_dir_option
@click.option("--state", type=STATES, help="Only intents in this state.")
@click.option("--app", help="Only intents of this app.")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="At most this many, the newest (a line on stderr says when more match).",
)
@json_option
def list_intents(data_dir: Path, state: str | None, app: str | None, limit: int, as_json: bool) -> None:
    """List intents, newest first."""
    with connection(data_dir) as conn:
        rows = ops.listing(conn, State(state) if state else None, app, limit + 1)  # one more: do more match?
    if len(rows) > limit:
        # A script retrying or counting what it lists would miss the rest (as `cloud-bridge intents ls` says)
        rows = rows[:limit]
        click.echo(f"only the {limit} newest intents are shown; more match (raise --limit, or filter)", err=True)
    if as_json:
        print_json([row_json(r) for r in rows])
    else:
        print_table(rows)


@click.command()
@data_dir_option
@click.argument("intent_id")
@json_option
def show(data_dir: Path, intent_id: str, as_json: bool) -> None:
    """Show one intent with its payload."""
    with connection(data_dir) as conn:
        row = ops.get(conn, intent_id)
    data = row_json(row, payload=True)
    if as_json:
        print_json(data)
    else:
        print_row(data)


@click.command()
@data_dir_option
@click.argument("intent_id", required=False)
@click.option(
    "--state",
    type=click.Choice([s.value for s in RETRYABLE]),
    help="Retry every intent in this state instead of one id.",
)
@json_option
def retry(data_dir: Path, intent_id: str | None, state: str | None, as_json: bool) -> None:
    """Queue a failed or expired intent again (ID, or all of --state)."""
    if (intent_id is None) == (state is None):
        raise click.UsageError("give either an intent ID or --state, not both")
    if state is None:
        shown, count = [row_json(write_op(data_dir, ops.retry, intent_id, now_ms()))], 1
    else:
        shown, count = _retry_state(data_dir, State(state), as_json)
    if as_json:
        print_json(shown)
    else:
        click.echo(f"queued again: {counted(count, 'intent')}")


def _retry_state(data_dir: Path, state: State, as_json: bool) -> tuple[list[dict[str, Any]], int]:
    """Retry every intent in `state`, in paced steps (a running outbox's intake waits for one at most, where one
    transaction for 200,000 took 15 s and 1 GB); (the rows as JSON if asked, how many)."""
    now, last = now_ms(), 0
    shown: list[dict[str, Any]] = []

    def step(conn: sqlite3.Connection, limit: int) -> int:
        nonlocal last
        done = ops.retry_state(conn, state, now, after=last, limit=limit)
        if done:
            last = done[-1].seq  # one that failed again meanwhile is not retried twice
        if as_json:
            shown.extend(row_json(row) for row in done)
        return len(done)

    with connection(data_dir) as conn:
        count = paced.in_transactions(conn, step)
    return shown, count


@click.command()
@data_dir_option
@click.argument("intent_id")
@json_option
def cancel(data_dir: Path, intent_id: str, as_json: bool) -> None:
    """Cancel an intent that has not been sent to the bridge yet."""
    row = write_op(data_dir, ops.cancel, intent_id, now_ms())
    if as_json:
        print_json(row_json(row))
    else:
        click.echo(f"cancelled {row.id}")


@click.command()
@data_dir_option
@click.option(
    "--older-than",
    required=True,
    callback=duration_seconds,
    metavar="DURATION",
    help="Only intents whose final state is older than this, e.g. 7d or 12h.",
)
@click.option(
    "--state",
    type=click.Choice(sorted(s.value for s in FINAL)),
    help="Only this final state (default: every final state).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@json_option
def purge(data_dir: Path, older_than: float, state: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete intents in a final state; pending intents are never purged. Asks first unless --yes."""
    before = now_ms() - int(older_than * 1000)
    states = [State(state)] if state else FINAL
    with connection(data_dir) as conn:  # a read: the count of a million rows held the writer's lock 0.2 s
        count = retention.purge(conn, before, states, True)
    if not dry_run and count and not yes:
        what = state or "final"
        click.confirm(
            f"delete {counted(count, what + ' intent')} older than {format_age(older_than)}?", abort=True, err=True
        )
    if not dry_run and count:
        with connection(data_dir) as conn:  # in paced steps: a running outbox's intake waits for one at most
            count = paced.in_transactions(conn, lambda c, step: retention.purge(c, before, states, limit=step))
    if as_json:
        print_json({"would_purge" if dry_run else "purged": count})
    else:
        click.echo(f"{'would purge' if dry_run else 'purged'} {counted(count, 'intent')}")


COMMANDS = (status, list_intents, show, retry, cancel, purge)
