"""JSON from outside (a request body, a provider's or the bridge's answer), with size and depth limits.

Parsed with orjson (compiled): an intent's 100 bytes in 0.7 us, where this module's standard-parser path
took 3.7; with the limits' checks `loads` takes about half of `json.loads` alone (bench/findings.md
F47). orjson is also the stricter reader, and the outbox needs that: a string with a lone surrogate
escape (`"\\ud800"`) or a number past the float range (`1e400`) is refused here, where the standard
parser let them through to fail later, in the schema check or in the msgpack batch to the bridge. orjson
reads an integer past 64 bits as a float, so a text with 19 digits in a row (the shortest such integer)
is read again by the standard parser, which keeps integers exact. Refusals are explained by the standard
parser where it finds the fault, so the messages name it as before.

Nesting: the standard parser recurses once per level (16,000 `[` in a 16 KiB body raised RecursionError,
a 500 and a traceback where it was not caught); orjson stops at 1,024. Any nesting past `max_depth` is a
DecodeError, whether a parser gave up on it or a shallower document came back and was measured.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from intent_contract.codec import check_depth
from intent_contract.errors import DecodeError
from intent_contract.wire import DEFAULT_LIMITS

MAX_DEPTH: Final = DEFAULT_LIMITS.max_depth
INT64_RANGE: Final = (-(2**63), 2**64 - 1)  # the integers msgpack carries (signed and unsigned 64 bits)

_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN = b"0" * 19  # the shortest integer outside INT64_RANGE has 19 digits


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every call: json.loads with parse_constant builds a new one each time.
_STANDARD = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH, int64: bool = False) -> Any:
    """The parsed document; DecodeError when over `max_bytes`, not UTF-8 JSON, NaN/Infinity, a lone
    surrogate, a number past the float range, or too deep; with `int64`, also for an integer outside
    `INT64_RANGE`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data  # a lone surrogate: not UTF-8
    if len(raw) > max_bytes:
        raise DecodeError(f"JSON of {len(raw)} bytes is over the {max_bytes}-byte limit", raw)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _refusal(raw, max_depth, str(exc)) from None
    # Every container opens with `{` or `[` (one inside a string only adds to the count), so a document
    # with no more of them than `max_depth` cannot nest deeper and the walk is skipped: most documents
    # here are small, and the walk cost an intent's intake 0.6-0.8 us (bench/findings.md F35).
    if raw.count(b"{") + raw.count(b"[") > max_depth:
        check_depth(document, max_depth, raw)
    if long_digits(raw):
        # Read again for exact integers: orjson took the text, and it nests no deeper than `max_depth`.
        try:
            document = _STANDARD.decode(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # not known to happen: orjson is the stricter reader
            raise _refusal(raw, max_depth, str(exc)) from None
        if int64:
            _check_integers(document, raw)
    return document


def _refusal(raw: bytes, max_depth: int, reason: str) -> DecodeError:
    """Why orjson refused `raw`, in the standard parser's words where it finds the fault."""
    try:
        document = _STANDARD.decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return DecodeError(f"not UTF-8: {exc.reason} at byte {exc.start}", raw)
    except RecursionError:
        return DecodeError(f"message nested deeper than {max_depth} levels", raw)
    except ValueError as exc:  # JSONDecodeError and the constants refused above
        return DecodeError(f"not JSON: {exc}", raw)
    check_depth(document, max_depth, raw)  # orjson's own limit is deeper than any `max_depth` here
    return DecodeError(f"not JSON: {reason}", raw)  # a lone surrogate, a number past the float range


def long_digits(raw: bytes) -> bool:
    """Whether `raw` has 19 digits in a row (an integer in it may not fit 64 bits).

    One translate and one substring search: 0.27 us for an 80-byte payload and 1.0 us for 1.3 KB, where
    the regex `[0-9]{19}` took 0.72 and 12 us (bench/findings.md F38).
    """
    return _NINETEEN in raw.translate(_ZEROS)


def _check_integers(document: Any, raw: bytes) -> None:
    """DecodeError for an integer outside INT64_RANGE (depth is bounded by the parsers)."""
    low, high = INT64_RANGE
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, int) and not isinstance(node, bool) and not low <= node <= high:
            raise DecodeError("integer out of the 64-bit range", raw)
