"""What the outbox does with one publish on `outbox/{app}/{kind}`: pure, no I/O, injected clock and ids.

Every input ends as an `Admitted` intent or a `Refused` one with a stable code; nothing is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from intent_contract.errors import SchemaViolationError
from intent_contract.names import KINDS, is_name
from intent_contract.schemas import validate
from intent_contract.timefmt import parse_rfc3339_ms

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DEPTH = 32
KEPT_BYTES_OF_REFUSED = 4096
TOPIC_ROOT = "outbox"
_INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack can carry to the bridge


@dataclass(frozen=True, slots=True)
class Admitted:
    """A valid intent, ready to be committed."""

    id: str
    app: str
    kind: str
    payload: bytes  # the JSON as received
    priority: int
    created: int  # ms since epoch
    expires: int | None
    id_given: bool

    def __post_init__(self) -> None:
        if not (is_name(self.id) and is_name(self.app) and self.kind in KINDS):
            raise ValueError("Admitted needs a valid id, app and kind")


@dataclass(frozen=True, slots=True)
class Refused:
    """Input that cannot become an intent; stored as `rejected` with its reason."""

    id: str
    app: str
    kind: str
    code: str
    detail: str
    payload: bytes  # at most KEPT_BYTES_OF_REFUSED of the input, for inspection
    size: int  # the input's full size
    created: int


def split_topic(topic: str) -> tuple[str, str] | None:
    """(app, kind) of an intake topic `outbox/{app}/{kind}`, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == TOPIC_ROOT:
        return parts[1], parts[2]
    return None


def status_topic(app: str, intent_id: str) -> str:
    """Where the status of an intent is published for its app."""
    return f"{TOPIC_ROOT}/{app}/status/{intent_id}"


def admit(topic: str, raw: bytes, now_ms: int, new_id: Callable[[], str]) -> Admitted | Refused:
    """Decide what one publish becomes."""
    parts = split_topic(topic)
    app, kind = parts if parts else (topic.split("/")[1] if topic.count("/") else "", "")

    def refuse(code: str, detail: str, intent_id: str | None = None) -> Refused:
        return Refused(intent_id or new_id(), app, kind, code, detail, raw[:KEPT_BYTES_OF_REFUSED], len(raw), now_ms)

    if parts is None:
        return refuse("bad_topic", f"publish intents to {TOPIC_ROOT}/{{app}}/{{kind}}, not {topic!r}")
    if not is_name(app):
        return refuse("bad_app", f"app name {app!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")
    if kind not in KINDS:
        return refuse("unknown_kind", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return refuse("too_large", f"payload of {len(raw)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        doc = _load_json(raw)
    except ValueError as exc:
        return refuse("bad_json", str(exc))
    if not isinstance(doc, dict):
        return refuse("bad_json", f"an intent is a JSON object, not {type(doc).__name__}")
    given_id = doc.get("id")
    if given_id is not None and not is_name(given_id):
        return refuse("bad_id", f"id {str(given_id)[:80]!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")
    intent_id = given_id if isinstance(given_id, str) else None
    try:
        validate(kind, doc)
    except SchemaViolationError as exc:
        return refuse(exc.code, exc.detail, intent_id)
    try:
        expires = _deadline(doc, now_ms)
    except ValueError as exc:
        return refuse("bad_expiry", str(exc), intent_id)
    return Admitted(
        id=intent_id or new_id(),
        app=app,
        kind=kind,
        payload=raw,
        priority=int(doc.get("priority", 0)),
        created=now_ms,
        expires=expires,
        id_given=intent_id is not None,
    )


def _deadline(doc: dict[str, Any], now_ms: int) -> int | None:
    if "ttl" in doc:
        return now_ms + int(doc["ttl"]) * 1000
    if "expires_at" in doc:
        return parse_rfc3339_ms(str(doc["expires_at"]))
    return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_shape(doc)
    return doc


def _check_shape(doc: Any) -> None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
        elif isinstance(node, int) and not isinstance(node, bool) and not _INT_RANGE[0] <= node <= _INT_RANGE[1]:
            raise ValueError("integer out of the 64-bit range")
