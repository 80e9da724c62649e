"""Sizes as operators write them: '500M', '2G', '64KiB', '1048576'."""

from __future__ import annotations

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


# The largest size taken (8 PiB): larger is a typing slip, and float("1e309") or "inf" overflowed.
MAX_SIZE = 1 << 53


def parse_size(text: str) -> int:
    """Bytes in a size such as 500M, 2G or 1048576, at most MAX_SIZE; ValueError otherwise."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1] if value and value[-1] in _SIZE_UNITS else ""
    try:
        size = float(value.removesuffix(unit)) * _SIZE_UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G, 1048576)") from None
    if not abs(size) <= MAX_SIZE:  # also NaN
        raise ValueError(f"{text!r} is not a size of at most 8 PiB")
    if size != int(size):  # "0.5" was 0 bytes, which a limit takes for "no limit"; "1.5" was 1 byte
        raise ValueError(f"{text!r} is not a whole number of bytes (e.g. 500M, 1.5G, 1048576)")
    return int(size)
