"""Topic names and filters: validation and matching, pure."""

from __future__ import annotations

from functools import lru_cache

# The longest topic filter a local app may subscribe to, in UTF-8 bytes (docs/edge.md): a filter is kept in
# memory, in the database with its session, and matched against every message.
MAX_FILTER_BYTES = 1024
# outbox/{app}/status/{id}: only the outbox publishes there (None: any one level).
STATUS_SHAPE = ("outbox", None, "status", None)


def valid_filter(topic_filter: str) -> bool:
    """A filter is non-empty; `#` only as the whole last level; `+` only as a whole level [MQTT-4.7.1]; at most
    MAX_FILTER_BYTES."""
    if not topic_filter or "\x00" in topic_filter or len(topic_filter.encode("utf-8", "replace")) > MAX_FILTER_BYTES:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


@lru_cache(maxsize=4096)
def _levels(text: str) -> tuple[str, ...]:
    return tuple(text.split("/"))


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter`; wildcards at the first level never match `$` topics."""
    if topic_filter == topic:
        return True
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    pattern, levels = _levels(topic_filter), _levels(topic)
    for index, want in enumerate(pattern):
        if want == "#":
            return True
        if index >= len(levels):
            return False
        if want != "+" and want != levels[index]:
            return False
    return len(pattern) == len(levels)


def may_match(topic_filter: str, shape: tuple[str | None, ...]) -> bool:
    """Whether `topic_filter` can match some topic of `shape` (None: any one level), e.g. a status topic."""
    pattern = _levels(topic_filter)
    for index, want in enumerate(pattern):
        if want == "#":
            return True
        if index >= len(shape):
            return False
        fixed = shape[index]
        if want != "+" and fixed is not None and want != fixed:
            return False
    return len(pattern) == len(shape)


def is_status_topic(topic: str) -> bool:
    """Whether `topic` is a status topic, where no client may publish: neither a PUBLISH nor a will."""
    return may_match(topic, STATUS_SHAPE)


def may_publish(principal: str | None, topic: str) -> bool:
    """With logins, an app publishes only under outbox/{app}/ and never to a status topic."""
    return principal is None or (
        topic.startswith(f"outbox/{principal}/") and not topic.startswith(f"outbox/{principal}/status/")
    )


def refusal(principal: str | None, topic: str) -> str | None:
    """Why a client may not publish to `topic`, not an intake topic (None: it may)."""
    if is_status_topic(topic):
        return "only the outbox publishes on status topics"
    if not may_publish(principal, topic):
        return f"app {principal!r} may publish only under outbox/{principal}/"
    return None


def may_subscribe(principal: str | None, topic_filter: str) -> bool:
    """With logins, an app subscribes only to its own statuses."""
    return principal is None or topic_filter.startswith(f"outbox/{principal}/status/")
