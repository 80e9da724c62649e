"""How the edge-outbox CLI shows things: JSON rows, tables, the link view, sizes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from edge_outbox.db import IntentRow
from edge_outbox.identity import Identity
from intent_contract.timefmt import format_age, format_ms

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1] if value and value[-1] in _SIZE_UNITS else ""
    try:
        return int(float(value.removesuffix(unit)) * _SIZE_UNITS[unit])
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G, 1048576)") from None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def row_json(row: IntentRow, *, payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in asdict(row).items() if k not in ("payload", "seq", "confirmed")}
    out["state"] = str(row.state)
    for key in ("created", "updated", "expires"):
        out[key] = format_ms(out[key]) if out[key] is not None else None
    if payload:
        text = row.payload.decode("utf-8", errors="replace")
        try:
            out["payload"] = json.loads(text)
        except ValueError:
            out["payload_text"] = text
    return out


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_table(rows: list[IntentRow]) -> None:
    table = Table(box=None, pad_edge=False)
    for name in ("id", "app", "kind", "state", "code", "age", "attempt"):
        table.add_column(name)
    now = now_ms()
    for r in rows:
        table.add_row(r.id, r.app, r.kind, r.state.value, r.code, format_age((now - r.created) / 1000), str(r.attempt))
    Console().print(table)


def link_view(link: dict[str, Any] | None, identity: Identity | None, pending: int) -> dict[str, Any]:
    """What status shows of the bridge link, from what the running outbox last recorded."""
    if identity is None:
        return {"state": "not enrolled", "device_id": None, "last_contact": None, "rate": 0.0, "drain_s": None}
    if link is None:
        return {
            "state": "unknown (outbox not running)",
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
        "drain_s": round(pending / rate, 1) if rate > 0 and pending else (0.0 if not pending else None),
    }
