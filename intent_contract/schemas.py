"""JSON Schema validation of intents and envelopes against the bundled schemas/ directory."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

from intent_contract.errors import SchemaViolationError
from intent_contract.names import KINDS
from intent_contract.readable import readable

_BASE = "https://edge-outbox.local/schemas/"


def schema_dir() -> Path:
    """The schemas/ directory: inside the package in a wheel, at the repository root otherwise."""
    bundled = Path(__file__).parent / "schemas"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parents[1] / "schemas"


@cache
def _validators() -> dict[str, jsonschema_rs.Validator]:
    docs = {p.stem: json.loads(p.read_text()) for p in schema_dir().glob("*.json")}
    names = (*KINDS, "envelope")
    # The $refs point only into the bundled files: resolve them once here, so no validator ever
    # looks anything up. jsonschema-rs (compiled) checks an envelope and its payload in ~1.5 us,
    # against ~300 us with the pure-Python jsonschema (bench/findings.md F7).
    return {name: jsonschema_rs.validator_for(_inline(docs[name], docs[name], docs)) for name in names}


def _inline(node: Any, base: dict[str, Any], docs: dict[str, dict[str, Any]]) -> Any:
    """`node` with every `$ref` replaced by what it points to (refs are never recursive here)."""
    if isinstance(node, list):
        return [_inline(item, base, docs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return {key: _inline(value, base, docs) for key, value in node.items()}
    file, _, pointer = ref.partition("#")
    target_doc = docs[file.removeprefix(_BASE).removesuffix(".json")] if file else base
    target: Any = target_doc
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        target = target[part]
    resolved = _inline(target, target_doc, docs)
    siblings = {key: _inline(value, base, docs) for key, value in node.items() if key != "$ref"}
    return {**resolved, **siblings} if siblings else resolved


def known_schemas() -> tuple[str, ...]:
    """Names of the schemas that `validate` accepts: each intent kind and 'envelope'."""
    return tuple(_validators())


def is_valid(name: str, document: object) -> bool:
    """Whether `document` matches schema `name` (a known one); ValueError for what JSON has no word for."""
    return bool(_validators()[name].is_valid(document))


def validate(name: str, document: object) -> None:
    """Raise SchemaViolationError('schema_violation', ...) unless `document` matches schema `name`."""
    validator = _validators().get(name)
    if validator is None:
        raise SchemaViolationError("unknown_kind", f"unknown kind {name!r}; known: {', '.join(KINDS)}")
    try:
        if validator.is_valid(document):
            return
        error = _most_specific(next(iter(validator.iter_errors(document))))
    except ValueError as exc:
        # What JSON has no word for: msgpack's binary values and non-text keys ("Unsupported type: 'bytes'"),
        # a string with a lone surrogate (UnicodeEncodeError). Refused like any other shape it does not take.
        raise SchemaViolationError("schema_violation", readable(f"not JSON data: {exc}")[:300]) from None
    where = "/".join(str(p) for p in error.instance_path) or "(top level)"
    # The reason can quote the document (a key it did not expect): written out, as a detail is stored.
    raise SchemaViolationError("schema_violation", readable(f"{where}: {error.message}")[:300])


def _most_specific(error: jsonschema_rs.ValidationError) -> jsonschema_rs.ValidationError:
    """For a failed oneOf/anyOf whose value fits only one branch's type, the reason inside that branch.

    "to: 'x' does not match '^[^@\\s]+@...'" tells an app more than "'x' is not valid under any of
    the schemas listed in the 'oneOf' keyword"; with several branches in play the summary stays.
    """
    while True:
        groups = getattr(error.kind, "context", None) or []
        viable = [group for group in groups if group and not any(isinstance(e.kind, _TYPE_ERROR) for e in group)]
        if len(viable) != 1:
            return error
        error = viable[0][0]


_TYPE_ERROR = jsonschema_rs.ValidationErrorKind.Type
