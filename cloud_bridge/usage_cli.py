"""`cloud-bridge usage`: intents ended per day, kind, device or tenant, with failures and provider times.

It prints what `Ledger.usage` returns (the call the dashboard's usage page makes too), as a table or
with --json. It reads the store's usage rollup (cloud_bridge.usage), so it works from any machine with
the store's settings, on SQLite and on PostgreSQL alike, and it still counts intents whose ledger rows
retention has purged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cloud_bridge.cli_common import clean_errors, name_flag, operator_settings, run_async
from cloud_bridge.own_threads import own_thread
from cloud_bridge.store import for_operators, open_store
from cloud_bridge.usage import Dimension, UsageQuery, UsageRow, day_of, parse_day, totals
from intent_contract.console import plain_console
from intent_contract.names import KINDS

Decorator = Callable[[Any], Any]

# The grouped columns' headers, by column name.
_HEADERS = {"day": "day", "tenant": "tenant", "device_id": "device", "kind": "kind"}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


def _read(
    data_dir: Path, store: str | None, config_path: Path | None, query: Callable[[float], UsageQuery]
) -> tuple[UsageQuery, list[UsageRow], float]:
    """The query made at the store's time (`query(now)`), its rows, and that time: this machine's clock may be
    off, and one ten days ahead asked for days still to come at the store ("no usage" for a busy bridge)."""
    settings = operator_settings(data_dir, config_path=config_path, store=store, node_id="cli")
    opened = open_store(settings.store_url, node=settings.node_id, timeout=settings.store_timeout)
    for_operators(opened)

    async def read() -> tuple[UsageQuery, list[UsageRow], float]:
        await opened.open(migrate=False)
        try:
            now = await own_thread(opened.intents.store_now)
            asked = query(now)
            return asked, await opened.ledger.usage(asked), now
        finally:
            await opened.close()

    return run_async(read())


def _print(query: UsageQuery, rows: list[UsageRow]) -> None:
    console = plain_console()
    table = Table(box=None, pad_edge=False, title=f"usage {query.since} .. {query.until}", title_justify="left")
    columns = query.columns
    for column in columns:
        table.add_column(_HEADERS[column], no_wrap=True)
    for name in ("intents", "failures", "delivered", "failed", "expired", "rejected", "p50", "p95", "max", "mean"):
        table.add_column(name, justify="right")

    def cells(r: UsageRow) -> list[str]:
        counts = (r.count, r.failures, r.delivered, r.failed, r.expired, r.rejected)
        return [f"{n:,}" for n in counts] + [_ms(v) for v in (r.p50_ms, r.p95_ms, r.max_ms, r.mean_ms)]

    for r in rows:
        keys = {"day": r.day, "tenant": r.tenant, "device_id": r.device_id, "kind": r.kind}
        table.add_row(*[keys[c] for c in columns], *cells(r))
    if len(rows) > 1:
        table.add_row("total", *[""] * (len(columns) - 1), *cells(totals(rows)), style="bold")
    console.print(table if rows else f"no usage {query.since} .. {query.until}", highlight=False, markup=False)


@click.command("usage")
@click.option("--tenant", default=None, help="Only this tenant.")
@click.option("--device", default=None, help="Only this device id.")
@click.option("--kind", default=None, type=click.Choice(sorted(KINDS)), help="Only this intent kind.")
@click.option(
    "--since", default="7d", show_default=True, help="First day: YYYY-MM-DD, or a duration back from now (7d)."
)
@click.option("--until", default="today", show_default=True, help="Last day (inclusive): YYYY-MM-DD or a duration.")
@click.option(
    "--by",
    type=click.Choice([str(d) for d in Dimension]),
    default="day",
    show_default=True,
    help="One row per day, kind, device or tenant.",
)
@clean_errors
def usage(
    data_dir: Path, store: str | None, config_path: Path | None, tenant: str | None, device: str | None,
    kind: str | None, since: str, until: str, by: str, as_json: bool,
) -> None:  # fmt: skip
    """Intents ended per day (or kind, device, tenant), UTC days: count, failures, provider time p50/p95/max/mean.

    Counted when an intent ends at the bridge: delivered, failed, expired, or rejected (policy, limits,
    schema of a known kind). Provider time is the integration call that ended it, from the bridge's executor.
    """
    name_flag("--tenant", tenant)
    name_flag("--device", device)

    def query_at(now: float) -> UsageQuery:  # the days counted from the store's today, not this machine's
        try:
            return UsageQuery(parse_day(since, now), parse_day(until, now), tenant, device, kind, (Dimension(by),))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None

    query_at(time.time())  # a bad --since or --until is refused before the store is opened
    query, rows, now = _read(data_dir, store, config_path, query_at)
    if as_json:
        doc = {
            "since": query.since,
            "until": query.until,
            "by": by,
            "today": day_of(now),
            "rows": [r.to_json() for r in rows],
            "total": totals(rows).to_json(),
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        _print(query, rows)


def register(main: click.Group, store_options: Decorator, json_option: Decorator) -> None:
    """Add `usage` to the CLI, with the CLI's own store options and --json."""
    main.add_command(store_options(json_option(usage)))
