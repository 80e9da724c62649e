"""`cloud-bridge devices ls | show ID | diagnose ID`: every site's queue and link, seen from the cloud.

They print what cloud_bridge.fleet_query returns (the functions a dashboard calls too), as tables or
with --json. They read the store, so they work from any machine with the store's settings, on SQLite
and on PostgreSQL alike; `diagnose` asks the node that holds the device (docs/fleet.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cloud_bridge import fleet_query
from cloud_bridge.cli_common import name_flag, operator_settings
from cloud_bridge.errors import BridgeError
from cloud_bridge.fleet_rules import SORT_KEYS, DeviceRow, clock_text
from cloud_bridge.store import Store, for_operators, open_store
from intent_contract.console import plain_console
from intent_contract.device_wire import Diagnosis, HealthReport
from intent_contract.timefmt import format_age, format_ms, parse_duration

Decorator = Callable[[Any], Any]


def _duration(_ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{param.name}".replace("_", "-")) from None


@contextlib.contextmanager
def _opened(data_dir: Path, store: str | None, config_path: Path | None) -> Iterator[Store]:
    """The store's registry and fleet tables, open (its schema at this code's version: `for_operators`)."""
    try:
        settings = operator_settings(data_dir, config_path=config_path, store=store)
        opened = open_store(settings.store_url, node="cli", timeout=settings.store_timeout)
        for_operators(opened)
        opened.registry.open()
        opened.fleet.open()
    except BridgeError as exc:
        raise click.ClickException(exc.detail) from None
    try:
        yield opened
    except BridgeError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        opened.fleet.close()
        opened.registry.close()


def _ago(now: float, then: float | None) -> str:
    return "-" if then is None else f"{format_age(max(0.0, now - then))} ago"


def link_text(row: DeviceRow, now: float) -> str:
    if row.revoked:
        return "revoked"
    if row.connected:
        return "connected"
    return "never seen" if row.seen_at is None else f"seen {_ago(now, row.seen_at)}"


def _print_rows(rows: list[DeviceRow], now: float) -> None:
    table = Table(box=None, pad_edge=False)
    # Ids are never cut (`show` and `diagnose` need them whole); the other columns give way.
    table.add_column("device", no_wrap=True, min_width=max((len(r.device_id) for r in rows), default=6))
    for name in ("tenant", "name", "link", "backlog", "oldest", "last error", "version", "clock", "flags"):
        table.add_column(name, justify="right" if name in ("backlog", "clock") else "left")
    for r in rows:
        error = "-" if r.last_error is None else f"{r.last_error[1]} ({_ago(now, r.last_error[0])})"
        table.add_row(
            r.device_id,
            r.tenant,
            r.name,
            link_text(r, now),
            "-" if r.backlog is None else str(r.backlog),
            "-" if r.oldest_pending_s is None else format_age(r.oldest_pending_s),
            error,
            r.version or "-",
            clock_text(r.clock_offset_ms),
            ",".join(r.flags) or "-",
        )
    plain_console().print(table)


def health_lines(report: HealthReport, received_at: float, now: float) -> list[tuple[str, str]]:
    """A report in words, as (topic, line) pairs; ages are as of when it arrived."""
    link = report.link
    queue = f"{report.pending:,} pending ({report.pending_bytes:,} bytes)"
    if report.oldest_pending_age_ms is not None:
        queue += f", the oldest {format_age(report.oldest_pending_age_ms / 1000)} old"
    limits = (
        f"limits {report.max_items:,} intents, {report.max_bytes:,} bytes"
        if report.max_items or report.max_bytes
        else "no limits"
    )
    counts = ", ".join(f"{state} {n}" for state, n in report.counts.items() if n)
    free = "-" if report.free_bytes is None else f"{report.free_bytes:,} bytes free"
    intake = "storing" if report.held_for_ms is None else (
        f"PAUSED for {format_age(report.held_for_ms / 1000)}: {report.held_reason} ({report.held} publishes held)"
    )  # fmt: skip
    error = "-" if report.last_error is None else (
        f"{report.last_error.code}: {report.last_error.detail} ({format_age(report.last_error.age_ms / 1000)} earlier)"
    )  # fmt: skip
    learned = report.clock_source or "never learned"
    return [
        ("report", f"{format_ms(int(received_at * 1000))} ({_ago(now, received_at)}), edge {report.software}"),
        ("link", f"{link.state} for {format_age(link.for_ms / 1000)}; {link.sent} sent, {link.acked} acked, "
                 f"{link.rate:g}/s; {link.connects} connects, {link.failures} failed"),
        ("queue", f"{queue}; {limits}"),
        ("intents", counts or "none"),
        ("disk", f"database {report.db_bytes:,} bytes, {free}"),
        ("intake", intake),
        ("clock", f"the edge corrects its clock by {report.clock_offset_ms / 1000:+g} s ({learned})"),
        ("last error", error),
    ]  # fmt: skip


def _print_lines(console: Console, lines: list[tuple[str, str]]) -> None:
    for topic, line in lines:
        console.print(f"{topic:>11}: {line}", highlight=False, markup=False)


def _print_diagnosis(console: Console, diagnosis: Diagnosis, received_at: float, now: float) -> None:
    _print_lines(console, health_lines(diagnosis.health, received_at, now))
    windows = ", ".join(diagnosis.windows) or "always"
    console.print(f"{'bridge':>11}: {diagnosis.bridge} over {diagnosis.transport}; forwarding windows: {windows}",
                  highlight=False, markup=False)  # fmt: skip
    errors = Table(title="recent errors (newest first)", box=None, pad_edge=False, title_justify="left")
    for name in ("age", "code", "detail"):
        errors.add_column(name)
    for e in diagnosis.errors:
        errors.add_row(format_age(e.age_ms / 1000), e.code, e.detail)
    console.print(errors if diagnosis.errors else "recent errors: none")
    window = format_age(diagnosis.failing_window_ms / 1000)
    failing = Table(title=f"most failing in the last {window}", box=None, pad_edge=False, title_justify="left")
    for name in ("kind", "code", "intents"):
        failing.add_column(name, justify="right" if name == "intents" else "left")
    for f in diagnosis.failing:
        failing.add_row(f.kind, f.code, str(f.count))
    console.print(failing if diagnosis.failing else f"failing in the last {window}: none")


def _print_row_header(console: Console, row: DeviceRow, now: float) -> None:
    where = f"connected to node {row.node} from {row.address}" if row.connected else link_text(row, now)
    console.print(f"{row.device_id} ({row.tenant}/{row.name}): {where}", highlight=False, markup=False)
    for anomaly in row.anomalies:
        console.print(Text.assemble(("anomaly", "bold red"), f" {anomaly.kind}: {anomaly.detail}"))
    if row.stuck:
        console.print(Text.assemble(("stuck", "bold red"), f": {row.stuck}"))


stuck_after_option = click.option(
    "--stuck-after",
    default="1h",
    show_default=True,
    callback=_duration,
    help="A backlog this old, or no contact for this long, is stuck.",
)


@click.command("ls")
@click.option("--tenant", default=None, help="Only this tenant's devices.")
@click.option("--stuck", "stuck_only", is_flag=True, help="Only stuck devices (see --stuck-after).")
@stuck_after_option
@click.option(
    "--sort",
    type=click.Choice(sorted(SORT_KEYS)),
    default="id",
    show_default=True,
    help="Row order; backlog, oldest, flags: largest first; seen: longest without contact first.",
)
def devices_ls(
    data_dir: Path, store: str | None, config_path: Path | None, tenant: str | None, stuck_only: bool,
    stuck_after: float, sort: str, as_json: bool,
) -> None:  # fmt: skip
    """List devices: tenant, link, backlog, oldest pending, last error, version, clock offset, flags."""
    name_flag("--tenant", tenant)
    with _opened(data_dir, store, config_path) as opened:
        now = opened.fleet.now()  # the store's time: this machine's clock may be off (fleet_query.overview)
        rows = fleet_query.overview(
            opened.registry, opened.fleet, now=now, stuck_after=stuck_after, tenant=tenant, stuck_only=stuck_only,
            sort=sort,
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        _print_rows(rows, now)


@click.command("show")
@click.argument("device_id")
@click.option("--history", default=20, show_default=True, type=click.IntRange(0, 100), help="History entries to show.")
@stuck_after_option
def devices_show(
    device_id: str, data_dir: Path, store: str | None, config_path: Path | None, history: int, stuck_after: float,
    as_json: bool,
) -> None:  # fmt: skip
    """Show one device: identity, link, its last health report, anomalies and its report history."""
    with _opened(data_dir, store, config_path) as opened:
        now = opened.fleet.now()
        found = fleet_query.detail(opened.registry, opened.fleet, device_id, now=now, stuck_after=stuck_after,
                                   history=history)  # fmt: skip
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
        return
    console, device, row = plain_console(), found.device, found.row
    _print_row_header(console, row, now)
    enrolled = format_ms(int(device.enrolled_at * 1000))
    revoked = "" if device.revoked_at is None else f"; revoked {format_ms(int(device.revoked_at * 1000))}"
    console.print(f"enrolled {enrolled}{revoked}", highlight=False)
    state, telemetry = found.state, found.telemetry
    if state is not None and state.refused_at is not None:
        console.print(f"last refused connect: {state.refused_code} ({_ago(now, state.refused_at)})", highlight=False)
    if telemetry is not None:
        console.print(
            f"last hour or two: {telemetry.connects} connects, {telemetry.auth_failures} refused, from "
            f"{', '.join(telemetry.addresses) or '-'}; {telemetry.recent_volume} intents in the busiest hour",
            highlight=False, markup=False,
        )  # fmt: skip
    if row.report is not None and row.report_at is not None:
        _print_lines(console, health_lines(row.report, row.report_at, now))
    else:
        console.print("no health report yet (the device never connected, or its edge is older than this bridge)")
    if found.history:
        table = Table(title="history (newest first)", box=None, pad_edge=False, title_justify="left")
        for name in ("at", "link", "backlog", "oldest", "held", "last error", "clock"):
            table.add_column(name)
        for h in found.history:
            r = h.report
            table.add_row(
                format_ms(int(h.at * 1000)), r.link.state, str(r.pending),
                "-" if r.oldest_pending_age_ms is None else format_age(r.oldest_pending_age_ms / 1000),
                str(r.held), "-" if r.last_error is None else r.last_error.code, clock_text(h.offset_ms),
            )  # fmt: skip
        console.print(table)
    console.print(f"public key:\n{device.public_key}", highlight=False, markup=False)


@click.command("diagnose")
@click.argument("device_id")
@click.option("--timeout", default="15s", show_default=True, callback=_duration, help="How long to wait for an answer.")
def devices_diagnose(
    device_id: str, data_dir: Path, store: str | None, config_path: Path | None, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Ask a connected device for a diagnosis (link, queue, disk, recent errors, most failing kinds) and print it;
    for a device that is not connected, its last report and since when. Exit 1 when a connected device did not
    answer within --timeout."""
    with _opened(data_dir, store, config_path) as opened:
        result = fleet_query.diagnose(opened.registry, opened.fleet, device_id, timeout=timeout)
        now = opened.fleet.now()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        console, row = plain_console(), result.row
        _print_row_header(console, row, now)
        request, outcome = result.request, result.outcome
        if result.diagnosis is not None and request is not None and request.answered_at is not None:
            console.print(f"diagnosis from the device (through node {request.node}):", highlight=False)
            _print_diagnosis(console, result.diagnosis, request.answered_at, now)
        else:
            why = {
                fleet_query.Outcome.OFFLINE: f"not connected ({link_text(row, now)}): it cannot be asked",
                fleet_query.Outcome.UNANSWERABLE: request.detail if request else "",
                fleet_query.Outcome.NO_ANSWER: f"no answer within {format_age(timeout)}"
                + (f" ({request.detail})" if request and request.detail else ""),
            }[outcome]
            console.print(f"no diagnosis: {why}", highlight=False, markup=False)
            if row.report is not None and row.report_at is not None:
                console.print("its last health report:")
                _print_lines(console, health_lines(row.report, row.report_at, now))
            else:
                console.print("it has sent no health report")
    if result.outcome is fleet_query.Outcome.NO_ANSWER:
        raise SystemExit(1)


def register(devices: click.Group, store_options: Decorator, json_option: Decorator) -> None:
    """Add these commands to the `devices` group, with the CLI's own store options and --json."""
    for command in (devices_ls, devices_show, devices_diagnose):
        devices.add_command(store_options(json_option(command)))
