"""Log lines carry their context (device, intent, app, code) in text and in JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from intent_contract.logs import LogThrottles, configure


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(fmt: str) -> str:
    stream = io.StringIO()
    configure("info", fmt, stream)  # type: ignore[arg-type]
    log = logging.getLogger("some.module")
    log.warning("device connect refused", extra={"device_id": "dev-1", "code": "token_expired"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("intent failed", extra={"intent_id": "i 1", "app": "hvac"})
    return stream.getvalue()


def test_text_lines_show_the_context_after_the_message(restore_root: object) -> None:
    first, second, *traceback = emit("text").splitlines()
    assert first.endswith("WARNING some.module: device connect refused device_id=dev-1 code=token_expired")
    assert second.endswith('ERROR some.module: intent failed app=hvac intent_id="i 1"')
    assert traceback[0] == "Traceback (most recent call last):"


def test_json_lines_are_objects_with_the_context(restore_root: object) -> None:
    first, second = (json.loads(line) for line in emit("json").splitlines())
    assert first["message"] == "device connect refused"
    assert (first["device_id"], first["code"], first["level"]) == ("dev-1", "token_expired", "warning")
    assert first["time"].endswith("Z")
    assert second["intent_id"] == "i 1" and "ValueError: boom" in second["exception"]


def test_text_from_outside_cannot_forge_or_colour_a_line(restore_root: object) -> None:
    """A topic or a client id is the publisher's to choose: a newline in one forged a log line of its own and
    an ESC reached the terminal. The text format writes control characters out, in the message and the
    context; a traceback still follows on lines of its own."""
    stream = io.StringIO()
    configure("info", "text", stream)
    log = logging.getLogger("some.module")
    log.warning("rejected input on %s", "outbox/app\nFAKE line\x1b[2J/email.send", extra={"app": "a\x1bb"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("client %s failed", "c\r\n1")
    first, second, *traceback = stream.getvalue().splitlines()
    assert first.endswith('rejected input on outbox/app\\u000aFAKE line\\u001b[2J/email.send app="a\\u001bb"')
    assert second.endswith("client c\\u000d\\u000a1 failed")
    assert traceback[0] == "Traceback (most recent call last):"
    assert "\x1b" not in stream.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_quoting_a_long_topic_is_clipped(restore_root: object, fmt: str) -> None:
    """A topic (or client id) is up to 64 KiB of the publisher's choosing: a 60,000-character one made a line of
    60 KB, one per publish under fresh app names. Message and context values are cut, saying how much was."""
    stream = io.StringIO()
    configure("info", fmt, stream)  # type: ignore[arg-type]
    topic = "outbox/app/" + "k" * 60_000
    logging.getLogger("some.module").warning("rejected input on %s", topic, extra={"client": "c" * 70_000})
    [line] = stream.getvalue().splitlines()
    assert len(line) < 3000
    assert f"({len('rejected input on ' + topic) - 2000} more characters)" in line
    assert "(69800 more characters)" in line


def test_keys_a_sender_chooses_cannot_each_have_a_line() -> None:
    """The edge throttled "rejected input" a line per app per interval, and app names are the publisher's: a
    fresh name per publish was a fresh throttle, and a line each. `lines` bounds all keys together; what it
    leaves out is counted and said by the next line written."""
    throttles = LogThrottles(10.0, lines=3, keys=4)
    written = [throttles.allow(f"app-{n}", 100.0) for n in range(50)]
    assert written[:3] == [0, 0, 0] and written[3:] == [None] * 47
    assert throttles.take_others() == 47 and throttles.take_others() == 0
    assert throttles.allow("app-0", 105.0) is None  # its own throttle still holds
    assert throttles.allow("app-99", 110.0) == 0  # a new window
    assert throttles.allow("app-0", 110.0) == 1  # what its own throttle held back
    for n in range(10):  # keys whose throttles hold nothing back are forgotten past `keys`
        throttles.allow(f"late-{n}", 200.0 + 10 * n)
    assert len(throttles._by_key) <= 4  # the bound is the point


def test_throttles_without_a_line_bound_keep_one_line_per_key() -> None:
    throttles = LogThrottles(1.0)
    assert [throttles.allow(f"dev-{n}", 0.0) for n in range(100)] == [0] * 100
    assert throttles.allow("dev-1", 0.5) is None and throttles.allow("dev-1", 1.0) == 1
