"""What the outbox does with one publish on `outbox/{app}/{kind}`: pure, no I/O, injected clock and ids.

Every input ends as an `Admitted` intent or a `Refused` one with a stable code; nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from intent_contract import json_bounded
from intent_contract.errors import DecodeError, SchemaViolationError
from intent_contract.names import KINDS, is_name
from intent_contract.readable import readable
from intent_contract.schemas import validate
from intent_contract.timefmt import parse_rfc3339_ms

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DEPTH = 32
KEPT_BYTES_OF_REFUSED = 4096
# What is read of a PUBLISH too large to take whole (its topic, packet id and as much of its payload as a refusal
# keeps): the rest is dropped as it arrives, and it is stored as refused (too_large) and acknowledged.
CUT_KEEP = 2 + 0xFFFF + 2 + KEPT_BYTES_OF_REFUSED
SHOWN_CHARS = 80  # of a refused app or kind that is not one: what is stored, and quoted in the detail
TOPIC_ROOT = "outbox"
REPLAY_TOPIC = "replay"  # outbox/{app}/replay: {"after": SEQ} asks for the app's statuses again


class Admitted(NamedTuple):
    """A valid intent, ready to be committed: `admit` makes it once the id, app, kind and payload passed.

    A NamedTuple, not a frozen dataclass (STYLE.md): one is built for every intent taken in. The frozen
    dataclass, with its check of the names `admit` had just checked, took 1.9-3.7 us to build; this takes
    0.4 us (bench/findings.md F33).
    """

    id: str
    app: str
    kind: str
    payload: bytes  # the JSON as received
    priority: int
    created: int  # ms since epoch
    expires: int | None
    id_given: bool


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


def same_intent(kind: str, payload: bytes, other_kind: str, other_payload: bytes) -> bool:
    """Whether a publish of an id already stored for the app is that intent again (a duplicate: answered with its
    status) or another one (refused, `id_conflict`): the same kind and the same JSON, as the bridge's ledger
    judges a resent id (`cloud_bridge.ledger_plan.body_digest`). Until December 2026 any body was a duplicate:
    an app that used an id again for another message had it dropped and was told the first one's status."""
    return kind == other_kind and (payload == other_payload or _doc(payload) == _doc(other_payload))


def _doc(payload: bytes) -> object:
    """A payload's JSON (its bytes for one orjson cannot read: a lone surrogate an older outbox stored)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload


def split_topic(topic: str) -> tuple[str, str] | None:
    """(app, kind) of an intake topic `outbox/{app}/{kind}`, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == TOPIC_ROOT:
        return parts[1], parts[2]
    return None


_MAX_SEQ = 2**63 - 1  # SQLite's largest integer: a seq past it cannot be compared in SQL


def replay_after(raw: bytes) -> int | None:
    """The `after` of a replay request `{"after": SEQ}` (on outbox/{app}/replay), or None for anything else."""
    try:
        doc = json_bounded.loads(raw, max_bytes=1000)
    except DecodeError:
        return None
    after = doc.get("after") if isinstance(doc, dict) else None
    return after if isinstance(after, int) and not isinstance(after, bool) and 0 <= after <= _MAX_SEQ else None


def status_topic(app: str, intent_id: str) -> str:
    """Where the status of an intent is published for its app."""
    return f"{TOPIC_ROOT}/{app}/status/{intent_id}"


def admit(
    topic: str,
    raw: bytes,
    now_ms: int,
    new_id: Callable[[], str],
    *,
    expiry_s: int | None = None,
    size: int | None = None,
) -> Admitted | Refused:
    """Decide what one publish becomes; `expiry_s` (an MQTT 5 message expiry) is a ttl when the intent has none.

    `size` is the payload's full size when `raw` is only its head (the rest was dropped unread: too large).
    """
    size = len(raw) if size is None else size
    parts = split_topic(topic)
    app, kind = parts if parts else (topic.split("/")[1] if topic.count("/") else "", "")

    def refuse(code: str, detail: str, intent_id: str | None = None) -> Refused:
        # The app's own id when the payload carries a valid one: its status topic is one the app knows.
        intent_id = intent_id or (_given_id(raw) if size == len(raw) else None) or new_id()
        # An app or kind that is not one is kept readable: a newline or an ESC in a topic level went raw
        # into the store, the log, `edge-outbox ls` and the status topic.
        return Refused(intent_id, _shown(app), _shown(kind), code, detail, raw[:KEPT_BYTES_OF_REFUSED], size, now_ms)

    if parts is None:
        return refuse("bad_topic", f"publish intents to {TOPIC_ROOT}/{{app}}/{{kind}}, not {topic[:200]!r}")
    if not is_name(app):
        return refuse("bad_app", f"app name {app[:SHOWN_CHARS]!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")
    if kind not in KINDS:
        return refuse("unknown_kind", f"unknown kind {kind[:SHOWN_CHARS]!r}; known: {', '.join(KINDS)}")
    if size > MAX_PAYLOAD_BYTES:
        return refuse("too_large", f"payload of {size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
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
        expires = _deadline(doc, now_ms, expiry_s)
    except ValueError as exc:
        return refuse("bad_expiry", str(exc), intent_id)
    return Admitted(
        intent_id or new_id(), app, kind, raw, int(doc.get("priority", 0)), now_ms, expires, intent_id is not None
    )


def _shown(text: str) -> str:
    """A topic level as stored with a refusal: a valid app or kind as it is, anything else cut and readable."""
    return readable(text[:SHOWN_CHARS])


def _given_id(raw: bytes) -> str | None:
    """The valid `id` of a payload being refused for another reason, if it has one. Read from one over
    MAX_PAYLOAD_BYTES too (`raw` is whole, so its transport bounded it): one refused as too_large had its status
    on a made-up id, and the app waiting on its own id's topic heard nothing."""
    try:
        doc = json_bounded.loads(raw, max_bytes=len(raw), max_depth=MAX_DEPTH, int64=True)
    except DecodeError:
        return None
    given = doc.get("id") if isinstance(doc, dict) else None
    return given if is_name(given) else None


def _deadline(doc: dict[str, Any], now_ms: int, expiry_s: int | None) -> int | None:
    if "ttl" in doc:
        return now_ms + int(doc["ttl"]) * 1000
    if "expires_at" in doc:
        return parse_rfc3339_ms(str(doc["expires_at"]))
    return None if expiry_s is None else now_ms + expiry_s * 1000


def _load_json(raw: bytes) -> Any:
    try:
        return json_bounded.loads(raw, max_bytes=MAX_PAYLOAD_BYTES, max_depth=MAX_DEPTH, int64=True)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None
