"""JSON Schema validation of intents and envelopes against the bundled schemas/ directory."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from intent_contract.errors import SchemaViolationError
from intent_contract.names import KINDS

_BASE = "https://edge-outbox.local/schemas/"


def schema_dir() -> Path:
    """The schemas/ directory: inside the package in a wheel, at the repository root otherwise."""
    bundled = Path(__file__).parent / "schemas"
    return bundled if bundled.is_dir() else Path(__file__).resolve().parents[1] / "schemas"


@cache
def _validators() -> dict[str, Draft202012Validator]:
    docs = {p.stem: json.loads(p.read_text()) for p in schema_dir().glob("*.json")}
    registry: Registry[Any] = Registry().with_resources(
        (_BASE + f"{name}.json", Resource.from_contents(doc)) for name, doc in docs.items()
    )
    names = (*KINDS, "envelope")
    return {name: Draft202012Validator(docs[name], registry=registry) for name in names}


def known_schemas() -> tuple[str, ...]:
    """Names of the schemas that `validate` accepts: each intent kind and 'envelope'."""
    return tuple(_validators())


def validate(name: str, document: object) -> None:
    """Raise SchemaViolationError('schema_violation', ...) unless `document` matches schema `name`."""
    validator = _validators().get(name)
    if validator is None:
        raise SchemaViolationError("unknown_kind", f"unknown kind {name!r}; known: {', '.join(KINDS)}")
    error = best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SchemaViolationError("schema_violation", f"{where}: {error.message}"[:300])
