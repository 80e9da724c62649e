"""Sortable unique ids: 26 characters of Crockford base32, 48 bits of milliseconds then 80 random bits.

Ids made by one generator sort in the order they were made, even within one millisecond, and always
match the contract's name pattern.
"""

from __future__ import annotations

from collections.abc import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
# Two characters per lookup: 13 of them cover the 130 bits of 26 characters (the top two are zero).
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))


def encode_id(ms: int, random_part: int) -> str:
    """The id for a millisecond timestamp and an 80-bit random part."""
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"timestamp out of range: {ms}")
    if not 0 <= random_part < 1 << _RANDOM_BITS:
        raise ValueError("random part out of range")
    value = (ms << _RANDOM_BITS) | random_part
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


class IdGenerator:
    """Makes monotonic ids from an injected clock (ms) and random source (bytes)."""

    def __init__(self, clock_ms: Callable[[], int], random_bytes: Callable[[int], bytes]) -> None:
        self._clock_ms = clock_ms
        self._random_bytes = random_bytes
        self._last_ms = -1
        self._last_random = 0

    def new(self) -> str:
        """A new id, greater than every id this generator made before."""
        ms = self._clock_ms()
        if ms <= self._last_ms:
            # Same millisecond (or the clock stepped back): count up from the last id.
            ms = self._last_ms
            random_part = self._last_random + 1
            if random_part >= 1 << _RANDOM_BITS:
                ms, random_part = ms + 1, 0
        else:
            random_part = int.from_bytes(self._random_bytes(10), "big")
            # Leave headroom so that counting up within one millisecond cannot overflow.
            random_part >>= 1
        self._last_ms, self._last_random = ms, random_part
        return encode_id(ms, random_part)
