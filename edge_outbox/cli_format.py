"""How the edge-outbox CLI shows things: JSON rows, tables, the link view, sizes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from edge_outbox.db import DB_NAME, IntentRow
from edge_outbox.health import problems
from edge_outbox.identity import Identity
from edge_outbox.link_rate import drain_seconds
from edge_outbox.lock import ATTACH_KEY, BEAT_KEY, INTAKE_KEY, LINK_KEY
from edge_outbox.ops import Summary
from intent_contract.console import cell, plain_console
from intent_contract.timefmt import format_age, format_ms


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def counted(count: int, noun: str, plural: str = "") -> str:
    """`1 intent`, `2 intents`: what the commands print used to say `1 intents` and `intent(s)`."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def row_json(row: IntentRow, *, payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in row._asdict().items() if k not in ("payload", "seq", "confirmed")}
    out["state"] = str(row.state)
    for key in ("created", "updated", "expires", "sent_at"):
        out[key] = format_ms(out[key]) if out[key] else None
    if payload:
        text = row.payload.decode("utf-8", errors="replace")
        try:
            out["payload"] = json.loads(text)
        except ValueError:
            out["payload_text"] = text
    return out


def print_row(data: dict[str, Any]) -> None:
    """One intent as `key: value` lines; absent values as `-`, the payload as indented JSON.

    Every value with its control characters written out: a refused payload's raw bytes (`payload_text`)
    or a detail holding an ESC or a newline drove the terminal or forged lines. JSON writes them out itself.
    """
    for key, value in data.items():
        if isinstance(value, dict | list):
            shown = "\n" + "\n".join(" " * 14 + line for line in json.dumps(value, indent=2).splitlines())
        else:
            shown = "-" if value is None or value == "" else cell(value)
        click.echo(f"{key:>12}: {shown}")


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_table(rows: list[IntentRow]) -> None:
    table = Table(box=None, pad_edge=False)
    # Ids are never cut (`show`, `retry` and `cancel` need them whole); the other columns give way.
    table.add_column("id", no_wrap=True, min_width=max((len(r.id) for r in rows), default=2))
    for name in ("app", "kind", "state", "code", "age", "attempt"):
        table.add_column(name)
    now = now_ms()
    for r in rows:  # stored text as it is (no markup), control characters written out: intent_contract.console
        age = format_age((now - r.created) / 1000)
        table.add_row(*map(cell, (r.id, r.app, r.kind, r.state.value, r.code, age, r.attempt)))
    plain_console().print(table)


def link_view(link: dict[str, Any] | None, identity: Identity | None, pending: int, *, running: bool) -> dict[str, Any]:
    """What status shows of the bridge link, from what the running outbox last recorded (none: it forwards
    nothing, or none runs)."""
    if identity is None:
        return {"state": "not enrolled", "device_id": None, "last_contact": None, "rate": 0.0, "drain_s": None}
    if link is None:
        if not identity.http_url:
            state = "none (enrolled offline, no bridge address: intents leave in bundles, edge-outbox export)"
        elif running:
            state = "unknown (the running outbox recorded none: starting, or run with --no-forward)"
        else:
            state = "unknown (outbox not running)"
        return {
            "state": state,
            "device_id": identity.device_id,
            "last_contact": None,
            "rate": 0.0,
            "drain_s": None,
        }
    rate = float(link.get("rate", 0.0))
    return {
        "state": link["state"],
        "device_id": identity.device_id,
        "since": format_ms(link["since"]),
        "last_contact": format_ms(link["last_contact"]) if link.get("last_contact") else None,
        "rate": round(rate, 1),
        "drain_s": None if (drain := drain_seconds(pending, rate)) is None else round(drain, 1),
        "error": link.get("error") or None,  # why the last attempt failed, while down
    }


def status_report(
    summary: Summary, live: dict[str, Any], identity: Identity | None, running: dict[str, Any] | None,
    data_dir: Path, free_bytes: int,
) -> dict[str, Any]:  # fmt: skip
    """What `edge-outbox status` says; `live` holds what the running outbox last recorded (empty when none runs)."""
    link, intake = live.get(LINK_KEY), live.get(INTAKE_KEY)
    intake = dict(intake) if isinstance(intake, dict) else None
    if intake is not None and intake.get("held_since"):
        intake["held_since"] = format_ms(int(intake["held_since"] * 1000))
    oldest = summary.oldest_pending_created
    return {
        "running": None if running is None else {"pid": running.get("pid"), "where": running.get("where")},
        "counts": summary.counts,
        "bytes": summary.bytes,
        "pending": summary.pending,
        "pending_bytes": summary.pending_bytes,
        "oldest_pending_age_s": (now_ms() - oldest) / 1000 if oldest else None,
        "database_bytes": sum(p.stat().st_size for p in data_dir.glob(DB_NAME + "*")),
        "database_free_bytes": free_bytes,  # of them, pages freed by retention: reused before the file grows
        "link": link_view(
            link if isinstance(link, dict) else None, identity, summary.pending, running=running is not None
        ),
        "intake": intake,
    }


def print_status(report: dict[str, Any]) -> None:
    console = plain_console()  # no markup in what the database holds; the two warnings are styled below
    table = Table(box=None, pad_edge=False)
    table.add_column("state")
    table.add_column("intents", justify="right")
    table.add_column("bytes", justify="right")
    for state, count in report["counts"].items():
        table.add_row(cell(state), str(count), str(report["bytes"][state]))
    console.print(table)
    running, link, intake = report["running"], report["link"], report["intake"]
    console.print(
        f"outbox: {'running, pid ' + str(running['pid']) + ', ' + running['where'] if running else 'not running'}"
    )
    drain = link["drain_s"]
    if drain is None and report["pending"]:
        drain_text = "unknown (nothing acknowledged in the last minute)"
    else:
        drain_text = format_age(drain) if drain is not None else "-"
    console.print(f"link: {link['state']}; last contact: {link['last_contact'] or '-'}; estimated drain: {drain_text}")
    if link.get("error"):
        click.echo(f"link error: {cell(link['error'])}")  # one line, as it is: not wrapped to the terminal
    oldest = report["oldest_pending_age_s"]
    console.print(
        f"pending: {report['pending']} ({report['pending_bytes']} bytes); oldest pending: "
        f"{format_age(oldest) if oldest is not None else '-'}; database: {report['database_bytes']} bytes"
        f" ({report['database_free_bytes']} free, reused before it grows)"
    )
    for problem in report.get("problems", []):
        console.print(Text.assemble(("unhealthy:", "bold red"), f" {cell(problem)}"))
    if intake and intake.get("held_since"):
        console.print(
            Text.assemble(
                ("intake paused", "bold red"),
                cell(
                    f" since {intake['held_since']}: {intake['reason']};"
                    f" {counted(intake['held'], 'publish', 'publishes')} held"
                ),
                " (their PUBACK waits)",
            )
        )


def report_problems(live: dict[str, Any], max_offline_s: float, *, revoked: bool) -> list[str]:
    """The health rule (edge_outbox.health) applied to what the running outbox last recorded (`live`: {} when
    none runs), and to the stored revocation (`revoked`), which holds whether an outbox runs or not."""
    link = live.get(LINK_KEY) or None
    intake = live.get(INTAKE_KEY) or {}
    attach = live.get(ATTACH_KEY) or {}
    held_since = intake.get("held_since")
    beat = live.get(BEAT_KEY)
    return problems(
        link_state=link["state"] if link else None,
        link_since_ms=int(link["since"]) if link else None,
        intake_held_since_ms=int(held_since * 1000) if held_since else None,
        intake_reason=intake.get("reason", ""),
        now_ms=now_ms(),
        max_offline_s=max_offline_s,
        revoked=revoked,
        attach_down_since_ms=attach.get("down_since_ms"),
        silent_s=(now_ms() - beat) / 1000 if isinstance(beat, int) and not isinstance(beat, bool) else None,
        attach_fault=attach.get("fault", ""),
        link_unanswered_since_ms=link.get("unanswered_since") if link else None,
    )
