"""Fleet health on the wire: an edge's health report, the bridge's diagnose request, the edge's diagnosis.

Versioned msgpack like the other messages (intent_contract.codec), decoded within
`wire.REPORT_LIMITS` (64 KiB, depth 4). Every field is checked for its type and range; a field this
side does not know is ignored, so an edge may add one within a version. Times the edge reports are
ages (how long before the message was made), so they mean the same on the bridge whatever the edge's
clock says; `at` is the edge's own clock when it made the report, from which the bridge measures the
offset between the two clocks. docs/wire.md lists the fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from intent_contract.codec import pack, unpack
from intent_contract.errors import DecodeError, UnsupportedVersionError
from intent_contract.names import is_name
from intent_contract.readable import readable
from intent_contract.timefmt import MAX_DURATION_S
from intent_contract.wire import DIAGNOSIS_ERRORS, DIAGNOSIS_FAILING, DIAGNOSIS_WINDOWS, REPORT_DETAIL, REPORT_LIMITS

REPORT_VERSION = 1
T = TypeVar("T")
_MAX_INT = (1 << 63) - 1
# An age or a duration in a report: no clock measured a longer one, and the bridge's views subtract ages
# from dates (2^63 ms before now is no date Python can write, and `devices ls --json` failed on it).
MAX_AGE_MS = MAX_DURATION_S * 1000


def clip(text: str, limit: int = REPORT_DETAIL) -> str:
    """`text` cut to `limit` characters, so that a report stays small."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class ErrorLine:
    """One thing that went wrong at the edge: how long ago, a stable code, a line for people."""

    age_ms: int
    code: str
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {"age_ms": self.age_ms, "code": self.code, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class LinkStats:
    """The edge's link to the bridge since the outbox started."""

    state: str  # offline, connecting, connected, revoked
    for_ms: int  # in that state for this long
    sent: int  # intents sent
    acked: int  # intents the bridge acknowledged
    rate: float  # intents acknowledged per second over the last minute
    connects: int  # connections made
    failures: int  # connection attempts that failed

    def to_wire(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "for_ms": self.for_ms,
            "sent": self.sent,
            "acked": self.acked,
            "rate": self.rate,
            "connects": self.connects,
            "failures": self.failures,
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A summary of one outbox, as it sends it to the bridge (`devices/{id}/health`)."""

    at: int  # the edge's own clock (ms) when it made the report
    software: str  # the edge's version
    counts: Mapping[str, int]  # intents per state
    sizes: Mapping[str, int]  # payload bytes per state
    pending: int  # intents the bridge has not finished yet
    pending_bytes: int
    oldest_pending_age_ms: int | None
    max_items: int  # the queue's limits (0: none)
    max_bytes: int
    db_bytes: int  # the outbox database on disk
    free_bytes: int | None  # free space on its file system
    held: int  # app publishes whose PUBACK is held: intake cannot store (full queue or disk)
    held_for_ms: int | None
    held_reason: str
    link: LinkStats
    last_error: ErrorLine | None
    clock_offset_ms: int  # the bridge's clock minus the edge's, as the edge learned it
    clock_source: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "software": self.software,
            "counts": dict(self.counts),
            "bytes": dict(self.sizes),
            "pending": self.pending,
            "pending_bytes": self.pending_bytes,
            "oldest_pending_age_ms": self.oldest_pending_age_ms,
            "max_items": self.max_items,
            "max_bytes": self.max_bytes,
            "db_bytes": self.db_bytes,
            "free_bytes": self.free_bytes,
            "held": self.held,
            "held_for_ms": self.held_for_ms,
            "held_reason": self.held_reason,
            "link": self.link.to_wire(),
            "last_error": None if self.last_error is None else self.last_error.to_wire(),
            "clock_offset_ms": self.clock_offset_ms,
            "clock_source": self.clock_source,
        }


@dataclass(frozen=True, slots=True)
class FailingKind:
    """How many intents of one kind ended with one code (failed, expired or rejected) in the window."""

    kind: str
    code: str
    count: int

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "code": self.code, "count": self.count}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """An edge's answer to a diagnose request (`devices/{id}/diagnosis`)."""

    request_id: str
    health: HealthReport
    errors: tuple[ErrorLine, ...]  # recent errors, newest first
    failing: tuple[FailingKind, ...]  # most frequent first
    failing_window_ms: int
    bridge: str  # the address the edge connects to
    transport: str  # tcp or websockets
    windows: tuple[str, ...] = field(default=())  # forwarding windows ("02:00-04:00"); none: always

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "health": self.health.to_wire(),
            "errors": [e.to_wire() for e in self.errors],
            "failing": [f.to_wire() for f in self.failing],
            "failing_window_ms": self.failing_window_ms,
            "bridge": self.bridge,
            "transport": self.transport,
            "windows": list(self.windows),
        }


# -- reading checked fields --------------------------------------------------------------------------


class _Fields:
    """Typed access to a decoded map; every miss is a DecodeError that names the field."""

    def __init__(self, obj: object, what: str, data: bytes) -> None:
        if not isinstance(obj, dict):
            raise DecodeError(f"{what}: expected a map", data)
        self._obj: dict[str, Any] = obj
        self._what = what
        self._data = data

    def fail(self, key: str, expected: str) -> DecodeError:
        return DecodeError(f"{self._what}: {key} must be {expected}", self._data)

    def natural(self, key: str) -> int:
        value = self._obj.get(key)
        if type(value) is not int or not 0 <= value <= _MAX_INT:
            raise self.fail(key, "a non-negative integer")
        return value

    def signed(self, key: str) -> int:
        value = self._obj.get(key)
        if type(value) is not int or abs(value) > _MAX_INT:
            raise self.fail(key, "an integer")
        return value

    def optional(self, key: str) -> int | None:
        return None if self._obj.get(key) is None else self.natural(key)

    def age(self, key: str) -> int:
        value = self._obj.get(key)
        if type(value) is not int or not 0 <= value <= MAX_AGE_MS:
            raise self.fail(key, f"an age in ms from 0 to {MAX_AGE_MS} (100 years)")
        return value

    def optional_age(self, key: str) -> int | None:
        return None if self._obj.get(key) is None else self.age(key)

    def number(self, key: str) -> float:
        value = self._obj.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise self.fail(key, "a non-negative number")
        return float(value)

    def text(self, key: str, limit: int = REPORT_DETAIL) -> str:
        """The string, its control characters written out (`readable`): the dashboard and the CLI show it."""
        value = self._obj.get(key, "")
        if not isinstance(value, str) or len(value) > limit:
            raise self.fail(key, f"a string of at most {limit} characters")
        return readable(value)

    def name(self, key: str) -> str:
        value = self._obj.get(key)
        if not is_name(value):
            raise self.fail(key, "a name")
        return str(value)

    def counts(self, key: str) -> dict[str, int]:
        value = self._obj.get(key)
        if not isinstance(value, dict) or not all(is_name(k) and type(v) is int and v >= 0 for k, v in value.items()):
            raise self.fail(key, "a map of names to non-negative integers")
        return dict(value)

    def entries(self, key: str, limit: int) -> list[_Fields]:
        value = self._obj.get(key, [])
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(key, f"a list of at most {limit} entries")
        return [_Fields(item, f"{self._what}.{key}", self._data) for item in value]

    def sub(self, key: str) -> _Fields | None:
        value = self._obj.get(key)
        return None if value is None else _Fields(value, f"{self._what}.{key}", self._data)

    def texts(self, key: str, limit: int) -> tuple[str, ...]:
        value = self._obj.get(key, [])
        short = all(isinstance(v, str) and len(v) < 64 for v in value) if isinstance(value, list) else False
        if not short or len(value) > limit:
            raise self.fail(key, f"a list of at most {limit} short strings")
        return tuple(readable(v) for v in value)


def _error_line(f: _Fields) -> ErrorLine:
    return ErrorLine(f.age("age_ms"), f.text("code", 64), f.text("detail"))


def _health(f: _Fields) -> HealthReport:
    link = f.sub("link")
    if link is None:
        raise f.fail("link", "a map")
    last_error = f.sub("last_error")
    return HealthReport(
        at=f.natural("at"),
        software=f.text("software", 64),
        counts=f.counts("counts"),
        sizes=f.counts("bytes"),
        pending=f.natural("pending"),
        pending_bytes=f.natural("pending_bytes"),
        oldest_pending_age_ms=f.optional_age("oldest_pending_age_ms"),
        max_items=f.natural("max_items"),
        max_bytes=f.natural("max_bytes"),
        db_bytes=f.natural("db_bytes"),
        free_bytes=f.optional("free_bytes"),
        held=f.natural("held"),
        held_for_ms=f.optional_age("held_for_ms"),
        held_reason=f.text("held_reason"),
        link=LinkStats(
            link.text("state", 32),
            link.age("for_ms"),
            link.natural("sent"),
            link.natural("acked"),
            link.number("rate"),
            link.natural("connects"),
            link.natural("failures"),
        ),
        last_error=None if last_error is None else _error_line(last_error),
        clock_offset_ms=f.signed("clock_offset_ms"),
        clock_source=f.text("clock_source", 64),
    )


def _decode(data: bytes, what: str, decoders: Mapping[int, Callable[[_Fields], T]]) -> T:
    obj = unpack(data, REPORT_LIMITS)
    version = obj.get("v") if isinstance(obj, dict) else None
    if type(version) is not int:  # not isinstance: True would pass for 1
        raise DecodeError(f"{what}: expected a map with an integer 'v'", data)
    decoder = decoders.get(version)
    if decoder is None:
        raise UnsupportedVersionError(version, sorted(decoders), (), data)
    return decoder(_Fields(obj, what, data))


def encode_health(report: HealthReport) -> bytes:
    """The msgpack message for `devices/{id}/health`."""
    return pack({"v": REPORT_VERSION, **report.to_wire()})


def decode_health(data: bytes) -> HealthReport:
    """A health report; DecodeError (UnsupportedVersionError for another version) when it is not one."""
    return _decode(data, "health report", {1: _health})


def encode_diagnose(request_id: str) -> bytes:
    """The msgpack message for `devices/{id}/diagnose`: the bridge asks for a diagnosis."""
    if not is_name(request_id):
        raise ValueError(f"bad request id {request_id!r}")
    return pack({"v": REPORT_VERSION, "id": request_id})


def _diagnose(f: _Fields) -> str:
    return f.name("id")


def decode_diagnose(data: bytes) -> str:
    """The request id of a diagnose request."""
    return _decode(data, "diagnose request", {1: _diagnose})


def encode_diagnosis(diagnosis: Diagnosis) -> bytes:
    """The msgpack message for `devices/{id}/diagnosis`."""
    return pack({"v": REPORT_VERSION, **diagnosis.to_wire()})


def _diagnosis(f: _Fields) -> Diagnosis:
    health = f.sub("health")
    if health is None:
        raise f.fail("health", "a map")
    return Diagnosis(
        request_id=f.name("id"),
        health=_health(health),
        errors=tuple(_error_line(e) for e in f.entries("errors", DIAGNOSIS_ERRORS)),
        failing=tuple(
            FailingKind(e.text("kind", 64), e.text("code", 64), e.natural("count"))
            for e in f.entries("failing", DIAGNOSIS_FAILING)
        ),
        failing_window_ms=f.age("failing_window_ms"),
        bridge=f.text("bridge", 300),
        transport=f.text("transport", 32),
        windows=f.texts("windows", DIAGNOSIS_WINDOWS),
    )


def decode_diagnosis(data: bytes) -> Diagnosis:
    """A diagnosis; DecodeError when it is not one."""
    return _decode(data, "diagnosis", {1: _diagnosis})


def health_from_wire(obj: object) -> HealthReport:
    """A health report from its `to_wire()` map (as the bridge stores it); DecodeError when it is not one."""
    return _health(_Fields(obj, "health report", b""))


def diagnosis_from_wire(obj: object) -> Diagnosis:
    """A diagnosis from its `to_wire()` map; DecodeError when it is not one."""
    return _diagnosis(_Fields(obj, "diagnosis", b""))
