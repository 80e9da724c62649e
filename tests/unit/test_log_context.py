"""Every bridge log line about a device or an intent carries its ids (and a code) as context fields.

The formatter (intent_contract/logs.py) shows only what is in `extra`: a device id written into the
message alone is invisible to a log shipper's filters. This reads every logging call of the bridge:
one whose message or arguments mention a device or an intent must pass `extra` with `device_id`
(`log_context(entry)` gives a ledger row's).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "cloud_bridge"
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
_ABOUT = {"device_id", "intent_id", "device", "entry", "username"}


def _mentions(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id in _ABOUT) or (isinstance(n, ast.Attribute) and n.attr in _ABOUT)
        for n in ast.walk(node)
    )


def _extra_has_device(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg != "extra":
            continue
        value = keyword.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "log_context":
            return True
        if isinstance(value, ast.Dict):
            return any(isinstance(k, ast.Constant) and k.value == "device_id" for k in value.keys)
    return False


def log_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"logger", "log"}
            ):
                calls.append((f"{path.relative_to(ROOT.parent)}:{node.lineno}", node))
    return calls


def test_lines_about_a_device_or_an_intent_carry_its_ids() -> None:
    calls = log_calls()
    assert len(calls) > 30  # the walk found the bridge's logging
    missing = [where for where, call in calls if any(_mentions(a) for a in call.args) and not _extra_has_device(call)]
    assert missing == [], f"log lines about a device without its id in extra: {missing}"
