"""JSON from outside (a request body, a provider's or the bridge's answer), with size and depth limits.

The standard parser recurses once per nesting level: 16,000 `[` in a 16 KiB body raise RecursionError
(a 500 and a traceback where it is not caught). Here any nesting past `max_depth` is a DecodeError,
whether the parser gave up on it or a shallower document came back and was measured.
"""

from __future__ import annotations

import json
from typing import Any, Final

from intent_contract.codec import check_depth
from intent_contract.errors import DecodeError
from intent_contract.wire import DEFAULT_LIMITS

MAX_DEPTH: Final = DEFAULT_LIMITS.max_depth


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every call: json.loads with parse_constant builds a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed document; DecodeError when over `max_bytes`, not UTF-8 JSON, NaN/Infinity or too deep."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise DecodeError(f"JSON of {len(raw)} bytes is over the {max_bytes}-byte limit", raw)
    try:
        document = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8: {exc.reason} at byte {exc.start}", raw) from None
    except RecursionError:
        raise DecodeError(f"message nested deeper than {max_depth} levels", raw) from None
    except ValueError as exc:  # JSONDecodeError and the constants refused above
        raise DecodeError(f"not JSON: {exc}", raw) from None
    # Every container opens with `{` or `[` (one inside a string only adds to the count), so a document
    # with no more of them than `max_depth` cannot nest deeper and the walk is skipped: most documents
    # here are small, and the walk cost an intent's intake 0.6-0.8 us (bench/findings.md F35).
    if raw.count(b"{") + raw.count(b"[") > max_depth:
        check_depth(document, max_depth, raw)
    return document
