"""`cloud-bridge intents ls | show | retry | cancel | purge`: the ledger's rows, for operators.

They print what cloud_bridge.operator_api returns (the functions the dashboard calls too), as tables or
with --json, from any machine with the store's settings, on SQLite and PostgreSQL alike, while nodes
run. A move the ledger does not allow (cancel a delivered intent) is refused: one line, exit 1.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cloud_bridge import operator_api
from cloud_bridge.cli_common import name_flag, operator_settings
from cloud_bridge.config.bridge import BridgeSection
from cloud_bridge.errors import BridgeError
from cloud_bridge.intent_sql import IntentQuery, SqlIntents
from cloud_bridge.operator_api import IntentDetail, IntentInfo
from cloud_bridge.store import for_operators, open_store
from intent_contract.console import plain_console
from intent_contract.names import KINDS
from intent_contract.progress import progress_line
from intent_contract.timefmt import format_age, parse_duration

Decorator = Callable[[Any], Any]


@contextlib.contextmanager
def _opened(data_dir: Path, store: str | None, config_path: Path | None) -> Iterator[tuple[SqlIntents, BridgeSection]]:
    """The store's intent operations (its schema at this code's version: `for_operators`), and the config's
    [bridge]."""
    try:
        settings = operator_settings(data_dir, config_path=config_path, store=store)
        opened = open_store(settings.store_url, node="cli", timeout=settings.store_timeout)
        for_operators(opened)
        opened.registry.open()  # the PostgreSQL registry owns the sync pool the intents share
        opened.intents.open()
    except BridgeError as exc:
        raise click.ClickException(exc.detail) from None
    try:
        yield opened.intents, settings.config.bridge
    except BridgeError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        opened.registry.close()


def _at_most(rows: list[IntentInfo], limit: int) -> list[IntentInfo]:
    """The first `limit` rows; a line on stderr when there were more (or as many as a listing returns at most)."""
    if len(rows) > limit or len(rows) == IntentQuery.MAX_LIMIT:
        click.echo(f"only the {limit} most recently changed are shown; more match (raise --limit, or filter)", err=True)
    return rows[:limit]


def _print_rows(rows: list[IntentInfo], now: float) -> None:
    table = Table(box=None, pad_edge=False)
    table.add_column("device", no_wrap=True, min_width=max((len(r.device_id) for r in rows), default=6))
    table.add_column("intent", no_wrap=True, min_width=max((len(r.intent_id) for r in rows), default=6))
    for name in ("tenant", "app", "kind", "state", "code", "attempt", "changed"):
        table.add_column(name, justify="right" if name == "attempt" else "left")
    for r in rows:
        table.add_row(
            r.device_id, r.intent_id, r.tenant, r.app, r.kind, r.state, r.code or "-", str(r.attempt),
            f"{format_age(max(0.0, now - r.updated))} ago",
        )  # fmt: skip
    plain_console().print(table)


def _show(detail: IntentDetail) -> None:
    for key, value in detail.intent.to_json().items():
        click.echo(f"{key + ':':<12} {'-' if value in (None, '') else value}")
    click.echo("history:")
    for record in detail.history:
        doc = record.to_json()
        click.echo(f"  {doc['at']}  {doc['event']:<8} {record.code} {record.detail}".rstrip())


def _operator(value: str | None) -> str:
    return value or os.environ.get("CLOUD_BRIDGE_OPERATOR") or getpass.getuser()


def _duration(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.ClickException(f"{flag}: {exc}") from None


def register(main: click.Group, store_options: Decorator, json_option: Decorator) -> None:
    """Add the `intents` group to `main`."""

    @main.group()
    def intents() -> None:
        """List, show, retry, cancel and purge the ledger's intents (docs/bridge.md, Operations)."""

    operator_option = click.option(
        "--operator", default=None, help="Your name in the audit log (default: $CLOUD_BRIDGE_OPERATOR or your login)."
    )
    ids_argument = click.argument("ids", nargs=-1, required=True, metavar="[DEVICE] INTENT_ID")

    @intents.command("ls")
    @store_options
    @click.option("--device", default=None, help="Only this device id.")
    @click.option("--tenant", default=None, help="Only this tenant.")
    @click.option(
        "--state",
        default=None,
        help="Only this state (queued, running, delivered, failed, expired, rejected).",
    )
    # A kind no intent can have was "no intents" (exit 0), where the dashboard's filter answers 400
    @click.option("--kind", default=None, type=click.Choice(sorted(KINDS)), help="Only this kind.")
    @click.option(
        "--limit",
        default=100,
        show_default=True,
        type=click.IntRange(1, IntentQuery.MAX_LIMIT),
        help="At most this many, the most recently changed (a line on stderr says when more match).",
    )
    @json_option
    def ls(
        data_dir: Path, store: str | None, config_path: Path | None, device: str | None, tenant: str | None,
        state: str | None, kind: str | None, limit: int, as_json: bool,
    ) -> None:  # fmt: skip
        """Intents in the ledger, the most recently changed first."""
        try:
            # One more than shown, to say when more match (a script retrying what `ls` lists would miss them).
            query = IntentQuery(
                name_flag("--device", device),
                name_flag("--tenant", tenant),
                operator_api.state_of(state),
                kind,
                min(limit + 1, IntentQuery.MAX_LIMIT),
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--state") from None
        with _opened(data_dir, store, config_path) as (ops, _):
            # Aged by the store's clock: this machine's may be off.
            rows, now = _at_most(operator_api.list_intents(ops, query), limit), ops.store_now()
        if as_json:
            click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        elif rows:
            _print_rows(rows, now)
        else:
            click.echo("no intents")

    @intents.command("show")
    @ids_argument
    @store_options
    @json_option
    def show(ids: tuple[str, ...], data_dir: Path, store: str | None, config_path: Path | None, as_json: bool) -> None:
        """One intent: DEVICE INTENT_ID, or INTENT_ID alone when only one device has it."""
        with _opened(data_dir, store, config_path) as (ops, _):
            info = operator_api.show_intent(ops, ids)
        if as_json:
            click.echo(json.dumps(info.to_json(), indent=2))
        else:
            _show(info)

    def _act(action: str) -> Callable[..., None]:
        fn = operator_api.retry if action == "retry" else operator_api.cancel

        def run(
            ids: tuple[str, ...], data_dir: Path, store: str | None, config_path: Path | None, operator: str | None,
            as_json: bool,
        ) -> None:  # fmt: skip
            with _opened(data_dir, store, config_path) as (ops, _):
                done = fn(ops, ids, _operator(operator), ops.store_now())
            click.echo(json.dumps(done.to_json(), indent=2) if as_json else done.line())

        return run

    retry_help = "Queue a failed or expired intent again, as a new attempt; its edge hears `accepted`, then the result."
    cancel_help = (
        "End a queued intent, or a running one whose call has not started, failed, code `cancelled`; its edge"
        " hears the result."
    )
    for action, text in (("retry", retry_help), ("cancel", cancel_help)):
        command = json_option(operator_option(store_options(ids_argument(_act(action)))))
        intents.command(action, help=text)(command)

    @intents.command("purge")
    @store_options
    @click.option(
        "--older-than",
        default=None,
        help="Final, confirmed intents this old (default: [bridge] intent_retention).",
    )
    @click.option("--audit-older-than", default=None, help="Audit rows this old (default: [bridge] audit_retention).")
    @json_option
    def purge(
        data_dir: Path, store: str | None, config_path: Path | None, older_than: str | None,
        audit_older_than: str | None, as_json: bool,
    ) -> None:  # fmt: skip
        """Delete history now, as the running bridge does every hour; live intents are never deleted."""
        intents_age = _duration(older_than, "--older-than")
        audit_age = _duration(audit_older_than, "--audit-older-than")
        with _opened(data_dir, store, config_path) as (ops, bridge), progress_line("purged") as progress:
            try:
                done = operator_api.purge(
                    ops,
                    intents_age=bridge.intent_retention if intents_age is None else intents_age,
                    audit_age=bridge.audit_retention if audit_age is None else audit_age,
                    now=ops.store_now(),
                    progress=progress,
                    max_intent_age=bridge.max_intent_age,
                )
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
        if as_json:
            click.echo(json.dumps(done.to_json(), indent=2))
        else:
            click.echo(f"purged {done.intents} intents and {done.audit} audit rows")
