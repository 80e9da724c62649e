"""The `edge-outbox` command: run the outbox, and inspect or steer its queue (also while it runs)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from edge_outbox import db, ops
from edge_outbox.apps_auth import hash_password, load_users
from edge_outbox.cli_format import link_view, now_ms, parse_size, print_json, print_table, row_json
from edge_outbox.db import LINK_KEY
from edge_outbox.errors import OutboxError
from edge_outbox.identity import enroll as enroll_device
from edge_outbox.identity import load_identity
from edge_outbox.settings import DEFAULT_DATA_DIR, AttachTarget, ForwarderSettings, OutboxSettings, parse_host_port
from edge_outbox.states import FINAL, RETRYABLE, State
from intent_contract.timefmt import format_age, parse_duration

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

STATES = click.Choice([s.value for s in State])


class _Group(click.Group):
    """Turns library errors into one clean line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OutboxError as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"database error: {exc}") from None


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


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-queue-bytes") from None


def duration_seconds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@contextmanager
def _connection(data_dir: Path) -> Iterator[sqlite3.Connection]:
    conn = db.connect(data_dir, create=False)
    try:
        yield conn
    finally:
        conn.close()


def _write(data_dir: Path, fn: Callable[..., T], *args: Any) -> T:
    """Run one ops function in its own transaction (the running outbox sees the change within a second)."""
    with _connection(data_dir) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-outbox")
def main() -> None:
    """Edge outbox: durable local intake of intents, forwarded to the cloud bridge when a link exists."""


@main.command()
@data_dir_option
@click.option(
    "--listen",
    default="127.0.0.1:1883",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the embedded MQTT broker listens for local apps.",
)
@click.option(
    "--attach",
    metavar="mqtt://HOST:PORT",
    help="Use an existing broker instead of the embedded one (password: EDGE_OUTBOX_ATTACH_PASSWORD).",
)
@click.option(
    "--attach-client-id",
    default="edge-outbox",
    show_default=True,
    help="Client id of the persistent session on the attached broker.",
)
@click.option("--attach-password", envvar="EDGE_OUTBOX_ATTACH_PASSWORD", hidden=True)
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="EDGE_OUTBOX_USERS",
    help="File of `app:hash` lines; when given, apps must log in.",
)
@click.option(
    "--max-queue-items",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Refuse new intents while this many wait (0: no limit).",
)
@click.option(
    "--max-queue-bytes",
    default="1G",
    show_default=True,
    help="Refuse new intents while this many payload bytes wait, e.g. 500M (0: no limit).",
)
@click.option(
    "--retention",
    default="7d",
    show_default=True,
    callback=duration_seconds,
    help="Purge intents this long after they reached a final state.",
)
@click.option("--no-forward", is_flag=True, help="Only take in and keep intents; do not forward them.")
@click.option(
    "--bridge-websocket",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Reach the bridge by MQTT over WebSocket over TLS on this port (for sites that only allow HTTPS out).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much to log (to stderr).",
)
def run(
    data_dir: Path,
    listen: str,
    attach: str | None,
    attach_client_id: str,
    attach_password: str | None,
    users_file: Path | None,
    max_queue_items: int,
    max_queue_bytes: str,
    retention: float,
    no_forward: bool,
    bridge_websocket: int | None,
    log_level: str,
) -> None:
    """Run the outbox: take intents from local apps, store them durably, forward them, publish their status."""
    from edge_outbox.runner import serve  # noqa: PLC0415 - keeps the ops commands quick to start

    host, port = parse_host_port(listen, "--listen")
    settings = OutboxSettings(
        data_dir=data_dir,
        listen_host=host,
        listen_port=port,
        attach=AttachTarget.parse(attach, attach_password, attach_client_id) if attach else None,
        users=load_users(users_file) if users_file else {},
        max_queue_items=max_queue_items,
        max_queue_bytes=_size(max_queue_bytes),
        retention_s=retention,
        forward=not no_forward,
        forwarder=ForwarderSettings(transport="websockets", websocket_port=bridge_websocket)
        if bridge_websocket
        else ForwarderSettings(),
    )
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if log_level != "debug":
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
    asyncio.run(serve(settings))


@main.command()
@data_dir_option
@json_option
def status(data_dir: Path, as_json: bool) -> None:
    """Counts per state, bytes used and the age of the oldest pending intent."""
    with _connection(data_dir) as conn:
        summary = ops.summary(conn)
        link_text = ops.get_meta(conn, LINK_KEY)
    link = link_view(json.loads(link_text) if link_text else None, load_identity(data_dir), summary.pending)
    oldest_age = (now_ms() - summary.oldest_pending_created) / 1000 if summary.oldest_pending_created else None
    db_bytes = sum(p.stat().st_size for p in data_dir.glob(db.DB_NAME + "*"))
    if as_json:
        print_json(
            {
                "counts": summary.counts,
                "bytes": summary.bytes,
                "pending": summary.pending,
                "pending_bytes": summary.pending_bytes,
                "oldest_pending_age_s": oldest_age,
                "database_bytes": db_bytes,
                "link": link,
            }
        )
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("state")
    table.add_column("intents", justify="right")
    table.add_column("bytes", justify="right")
    for state in State:
        table.add_row(state.value, str(summary.counts[state]), str(summary.bytes[state]))
    console = Console()
    console.print(table)
    console.print(
        f"link: {link['state']}; last contact: {link['last_contact'] or '-'}; "
        f"estimated drain: {format_age(link['drain_s']) if link['drain_s'] is not None else '-'}"
    )
    console.print(
        f"pending: {summary.pending} ({summary.pending_bytes} bytes); oldest pending: "
        f"{format_age(oldest_age) if oldest_age is not None else '-'}; database: {db_bytes} bytes"
    )


@main.command(name="ls")
@data_dir_option
@click.option("--state", type=STATES, help="Only intents in this state.")
@click.option("--app", help="Only intents of this app.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="At most this many.")
@json_option
def list_intents(data_dir: Path, state: str | None, app: str | None, limit: int, as_json: bool) -> None:
    """List intents, newest first."""
    with _connection(data_dir) as conn:
        rows = ops.listing(conn, State(state) if state else None, app, limit)
    if as_json:
        print_json([row_json(r) for r in rows])
    else:
        print_table(rows)


@main.command()
@data_dir_option
@click.argument("intent_id")
@json_option
def show(data_dir: Path, intent_id: str, as_json: bool) -> None:
    """Show one intent with its payload."""
    with _connection(data_dir) as conn:
        row = ops.get(conn, intent_id)
    data = row_json(row, payload=True)
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        shown = json.dumps(value, indent=2) if isinstance(value, dict | list) else value
        click.echo(f"{key:>12}: {shown}")


@main.command()
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
    if state is not None:
        rows = _write(data_dir, ops.retry_state, State(state), now_ms())
    else:
        rows = [_write(data_dir, ops.retry, intent_id, now_ms())]
    if as_json:
        print_json([row_json(r) for r in rows])
    else:
        click.echo(f"queued again: {len(rows)} intent(s)")


@main.command()
@data_dir_option
@click.argument("intent_id")
@json_option
def cancel(data_dir: Path, intent_id: str, as_json: bool) -> None:
    """Cancel an intent that has not been sent to the bridge yet."""
    row = _write(data_dir, ops.cancel, intent_id, now_ms())
    if as_json:
        print_json(row_json(row))
    else:
        click.echo(f"cancelled {row.id}")


@main.command()
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
@json_option
def purge(data_dir: Path, older_than: float, state: str | None, as_json: bool) -> None:
    """Delete intents in a final state; pending intents are never purged."""
    before = now_ms() - int(older_than * 1000)
    count = _write(data_dir, ops.purge, before, [State(state)] if state else FINAL)
    if as_json:
        print_json({"purged": count})
    else:
        click.echo(f"purged {count} intent(s)")


@main.command(name="hash-password")
@click.option("--app", required=True, help="The app name the login is for.")
@click.password_option(help="The password (prompted twice when not given; never echoed).")
def hash_password_cmd(app: str, password: str) -> None:
    """Print a users-file line `app:hash` for `edge-outbox run --users FILE`."""
    click.echo(f"{app}:{hash_password(password)}")


@main.command()
@data_dir_option
@click.option(
    "--bridge",
    "bridge_url",
    required=True,
    metavar="URL",
    help="The bridge's enrollment address, e.g. https://bridge.example.com:8443.",
)
@click.option("--code", required=True, help="The one-time code from `cloud-bridge devices enroll-code`.")
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="CA certificate that signed the bridge's certificate; it is pinned for every connection.",
)
@json_option
def enroll(data_dir: Path, bridge_url: str, code: str, ca: Path, as_json: bool) -> None:
    """Make this device's key and register it with the bridge (once per device)."""
    identity = enroll_device(data_dir, bridge_url, code, ca)
    if as_json:
        print_json(asdict(identity))
    else:
        click.echo(
            f"enrolled as device {identity.device_id} (tenant {identity.tenant}, name {identity.name}); "
            "restart `edge-outbox run` to start forwarding"
        )
