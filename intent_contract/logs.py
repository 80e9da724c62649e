"""Log output for both programs: context fields shown in every line, as text or as JSON.

Library code never configures logging; it logs with its context in `extra` (the device, the intent,
the app, the code: `CONTEXT`), and the CLIs call `configure()` once. The text format prints the
context as `key=value` after the message, so "device connect refused" says who and why; the JSON
format (`--log-format json`) writes one object a line for log shippers.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TextIO

from intent_contract.readable import readable

# The context keys every line may carry, in the order the text format prints them.
CONTEXT: Final = (
    "device_id", "tenant", "app", "intent_id", "kind", "state", "code", "client", "peer", "action", "bytes",
    "not_logged",
)  # fmt: skip
LogFormat = Literal["text", "json"]
Context = dict[str, object]  # a line's `extra`: CONTEXT keys (a None value is left out of the line)
# What one line may take of a message and of a context value. A line quotes what apps and devices send (a topic,
# a client id: up to 64 KiB each in MQTT), and a 60,000-character topic made a 60 KB line, one per publish under
# app names of the publisher's choosing; a line is for people and for journald, which cuts lines at 48 KiB.
MAX_MESSAGE_CHARS: Final = 2000
MAX_VALUE_CHARS: Final = 200


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    found = {key: getattr(record, key) for key in CONTEXT if getattr(record, key, None) is not None}
    return {key: clip(v, MAX_VALUE_CHARS) if isinstance(v, str) else v for key, v in found.items()}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # What a message quotes from outside (a topic, a client id) has its control characters written out:
        # a newline in it forged a line of its own, an ESC coloured the terminal. A traceback is added after.
        record.message = readable(clip(record.message, MAX_MESSAGE_CHARS))
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        if not context:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the context
        fields = " ".join(f"{key}={_text(value)}" for key, value in context.items())
        return f"{head} {fields}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, the context fields, and any traceback."""

    def converter(self, seconds: float | None) -> time.struct_time:
        return time.gmtime(seconds)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clip(record.getMessage(), MAX_MESSAGE_CHARS),
            **_context(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _text(value: object) -> str:
    text = str(value)
    quoted = not text or not text.isprintable() or any(c.isspace() or c in '"=' for c in text)
    return json.dumps(text) if quoted else text  # json.dumps writes control characters out


def configure(level: str, fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Set up the root logger for a CLI (never called by library code)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass(slots=True)
class LogThrottle:
    """At most one line per `interval` seconds; the next line written says how many were left out."""

    interval: float = 1.0
    _next: float = -math.inf
    _skipped: int = 0

    def allow(self, now: float) -> int | None:
        """The number of lines left out since the last one when this one may be written, else None."""
        if now < self._next:
            self._skipped += 1
            return None
        skipped, self._skipped = self._skipped, 0
        self._next = now + self.interval
        return skipped

    def holds(self, now: float) -> bool:
        """Whether a line now would be left out."""
        return now < self._next

    def drop(self) -> int:
        """The lines left out since the last one written, forgotten."""
        skipped, self._skipped = self._skipped, 0
        return skipped


@dataclass(slots=True)
class LogThrottles:
    """A LogThrottle per key (a device, a code): what one device repeats at will is a line per `interval`.

    Keys a sender chooses (an app's name on the edge) need `lines` too: at most that many lines per `interval`
    from all keys together, the rest counted (`take_others`). With per-key throttles alone, a fresh key per
    message was a fresh throttle, and a line each. Past `keys` keys, those whose throttle holds nothing back
    now are forgotten (what they had left out counted with the others): with `lines` set, at most twice `lines`
    hold something back at once.
    """

    interval: float = 1.0
    lines: int | None = None
    keys: int | None = None
    _by_key: dict[str, LogThrottle] = field(default_factory=dict)
    _window_end: float = -math.inf
    _in_window: int = 0
    _others: int = 0

    def allow(self, key: str, now: float) -> int | None:
        """As LogThrottle.allow, for `key`'s lines."""
        throttle = self._by_key.get(key)
        if throttle is not None and throttle.holds(now):
            return throttle.allow(now)  # None: left out, and counted for the key's next line
        if self.lines is not None:
            if now >= self._window_end:
                self._window_end, self._in_window = now + self.interval, 0
            if self._in_window >= self.lines:
                self._others += 1
                return None
            self._in_window += 1
        if throttle is None:
            if self.keys is not None and len(self._by_key) >= self.keys:
                self._forget(now)
            throttle = self._by_key[key] = LogThrottle(self.interval)
        return throttle.allow(now)

    def take_others(self) -> int:
        """Lines left out by `lines` (and by forgotten keys) since the last call."""
        others, self._others = self._others, 0
        return others

    def _forget(self, now: float) -> None:
        for key, throttle in list(self._by_key.items()):
            if not throttle.holds(now):
                self._others += throttle.drop()
                del self._by_key[key]


def left_out(not_logged: int) -> str:
    """What a throttled line adds to its message: how many like it were left out since the last."""
    return f" ({not_logged} more since the last line)" if not_logged else ""


@dataclass(slots=True)
class FailureEpisode:
    """A repeated operation's failures (a loop reading a store that a full disk or an outage refuses), logged
    once when they start (ERROR, without a traceback: they are not bugs) and once when it works again: a store
    down for an hour is two lines, where every try wrote an ERROR line and its traceback (several a second)."""

    logger: logging.Logger
    what: str
    failures: int = 0

    def failed(self, exc: BaseException) -> None:
        """One more failure: the first of an episode is logged."""
        self.failures += 1
        if self.failures == 1:
            self.logger.error("%s: %s; tried again, one line when it works again", self.what, exc,
                              extra={"code": getattr(exc, "code", None)})  # fmt: skip

    def worked(self) -> None:
        """It worked: the end of an episode is logged."""
        if self.failures:
            self.logger.warning("%s: works again after %d failed tries", self.what, self.failures)
            self.failures = 0
