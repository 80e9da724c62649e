"""Time and duration formats: RFC 3339 strings, milliseconds since the epoch, '24h'-style durations."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


# The longest duration taken: a time that far back or ahead is still a date Python can write, and a
# retention, a code's lifetime or an age beyond a century is a typing slip (99999999999w overflowed
# the stores and the date formats, after a purge had run).
MAX_DURATION_S = 100 * 366 * 86400


def parse_duration(text: str) -> float:
    """Seconds in a duration such as '90', '30s', '15m', '24h', '7d' or '2w', at most 100 years."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 24h, 7d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text!r} is longer than 100 years")
    return seconds


def parse_rfc3339_ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 timestamp, which must carry a zone."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from exc
    if moment.tzinfo is None:
        raise ValueError(f"RFC 3339 timestamp needs a zone (Z or +hh:mm): {text!r}")
    return int(moment.timestamp() * 1000)


@functools.lru_cache(maxsize=1024)  # the statuses of one commit share their time
def format_ms(ms: int) -> str:
    """RFC 3339 (UTC, millisecond precision) for milliseconds since the epoch."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_age(seconds: float) -> str:
    """A short human age: '850ms', '42s', '3m12s', '5h04m', '2d03h'."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
