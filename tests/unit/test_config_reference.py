"""docs/config.md and the definitions agree: every key of both sides, with its default, and every field of
both settings objects tied to a documented key.

The bridge's keys are walked from `BridgeConfig` (the pydantic models in cloud_bridge/config/); the
flags and the edge's keys are the `run` commands' click options. A key in the code and not in the
page, in the page and not in the code, or with another default, fails here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic.fields import FieldInfo

from cloud_bridge.cli import main as bridge_cli
from cloud_bridge.config import BridgeConfig
from cloud_bridge.config.fields import Section
from cloud_bridge.settings import FLAGS, BridgeSettings
from edge_outbox.cli import main as edge_cli
from edge_outbox.settings import FORWARDER_KEYS, OUTBOX_KEYS, ForwarderSettings, OutboxSettings
from intent_contract.timefmt import parse_duration

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
_ROW = re.compile(r"^\| `([^`]+)` \|(.*)\|\s*$")


def tables() -> dict[str, list[list[str]]]:
    """Heading (the text in backticks) -> rows of cells (the first cell without its backticks)."""
    found: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^### `([^`]+)`", line)
        if heading:
            current = found.setdefault(heading.group(1), [])
            continue
        if line.startswith("#"):
            current = None
        row = _ROW.match(line)
        if row and current is not None:
            current.append([row.group(1), *(cell.strip() for cell in row.group(2).split("|"))])
    return found


def _models(annotation: object) -> Iterator[tuple[type[Section], str]]:
    """The section models a field's type holds, with the path step a table keyed by name adds."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models(arg)
    elif origin is dict:
        for model, step in _models(typing.get_args(annotation)[1]):
            yield model, ".NAME" + step
    elif isinstance(annotation, type) and issubclass(annotation, Section):
        yield annotation, ""


def sections() -> dict[str, type[Section]]:
    """`[path]` -> model, for every table of the bridge's file (a model met twice is documented once)."""
    found: dict[str, type[Section]] = {}

    def walk(model: type[Section], path: str) -> None:
        if model in found.values():
            return
        if path:
            found[f"[{path}]"] = model
        for name, field in model.model_fields.items():
            for inner, step in _models(field.annotation):
                walk(inner, f"{path}.{field.alias or name}{step}".lstrip("."))

    walk(BridgeConfig, "")
    return found


def documented(text: str) -> object:
    """A default as the page writes it, as a value."""
    text = text.strip("`")
    if text == "none":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return json.loads(text)
    except ValueError:
        return parse_duration(text)


def code_default(field: FieldInfo) -> object:
    if field.is_required():
        return "required"
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


@pytest.mark.parametrize(("heading", "model"), sections().items())
def test_every_bridge_key_is_documented_with_its_default(heading: str, model: type[Section]) -> None:
    rows = {row[0]: row for row in tables().get(heading, [])}
    keys = {field.alias or name: field for name, field in model.model_fields.items()}
    assert sorted(rows) == sorted(keys), f"{heading}: documented {sorted(rows)}, defined {sorted(keys)}"
    for key, field in keys.items():
        _, kind, default, meaning = rows[key]
        assert kind and meaning, f"{heading} {key}: type and meaning"
        if list(_models(field.annotation)):
            continue  # a table: its own keys are checked under its own heading
        wanted = code_default(field)
        written = "required" if default == "required" else documented(default)
        assert written == wanted, f"{heading} {key}: the page says {default}, the code {wanted!r}"


def test_every_documented_bridge_table_exists() -> None:
    known = set(sections())
    extra = {h for h in tables() if h.startswith("[") and h not in known}
    assert extra == set()


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and not p.hidden and p.name is not None}


def _click_default(option: click.Option) -> object:
    default: Any = option.default
    if repr(default).startswith("Sentinel") or default is None:
        return False if option.is_flag else ([] if option.multiple else None)
    return str(default) if isinstance(default, Path) else default


def test_every_bridge_flag_is_documented() -> None:
    rows = {row[0]: row for row in tables()["cloud-bridge run"]}
    options = {option.opts[0]: option for option in _options(bridge_cli.commands["run"]).values()}
    assert sorted(rows) == sorted(options)
    for flag, option in options.items():
        _, env, default, meaning = rows[flag]
        assert meaning
        assert env.strip("`") == (option.envvar or ""), flag
        written = None if default == "none" else default.strip("`")
        assert written == _click_default(option), flag


def test_every_edge_key_is_documented() -> None:
    rows = {row[0]: row for row in tables()["edge-outbox run"]}
    options = _options(edge_cli.commands["run"])
    assert sorted(rows) == sorted(options)
    for key, option in options.items():
        _, flag, env, default, meaning = rows[key]
        assert meaning
        assert flag.strip("`") == option.opts[0], key
        assert env.strip("`") == (option.envvar or ""), key
        wanted = _click_default(option)
        written = documented(default) if isinstance(wanted, bool | list | type(None)) else default.strip("`")
        assert written == (str(wanted) if isinstance(wanted, int) and not isinstance(wanted, bool) else wanted), key


FIXED = DOC.read_text().split("### Fixed in code", 1)[1]


@pytest.mark.parametrize(
    ("settings", "keys", "known"),
    [
        (OutboxSettings, OUTBOX_KEYS, lambda: set(_options(edge_cli.commands["run"]))),
        (ForwarderSettings, FORWARDER_KEYS, lambda: set(_options(edge_cli.commands["run"]))),
        (BridgeSettings, FLAGS, lambda: {o.opts[0] for o in _options(bridge_cli.commands["run"]).values()}),
    ],
)
def test_every_settings_field_comes_from_a_documented_key_or_is_fixed_in_code(
    settings: type, keys: dict[str, str | None], known: typing.Callable[[], set[str]]
) -> None:
    fields = {f.name for f in dataclasses.fields(settings)}
    assert sorted(keys) == sorted(fields), f"{settings.__name__}: say which key sets each field"
    for name, key in keys.items():
        if key is None:
            nested = name in {"forwarder"}
            assert nested or f"`{name}`" in FIXED, f"{settings.__name__}.{name}: list it under 'Fixed in code'"
        else:
            assert key in known(), f"{settings.__name__}.{name}: {key} is not a documented option"


def test_the_values_fixed_in_code_are_the_ones_the_page_gives() -> None:
    """`window` (4,000 intents in flight), `ack_timeout_s` (30 s), ...: each figure is the field's default."""
    defaults = {
        f.name: f.default
        for settings in (OutboxSettings, ForwarderSettings, BridgeSettings)
        for f in dataclasses.fields(settings)
        if f.default is not dataclasses.MISSING
    }
    given = dict(re.findall(r"`(\w+)` \((\d[\d,.]*)", FIXED))
    assert len(given) >= 8
    assert {name: float(value.replace(",", "")) for name, value in given.items()} == {
        name: float(defaults[name]) for name in given
    }
