"""Sortable unique ids: 26 characters of Crockford base32, 48 bits of milliseconds then 80 random bits.

Ids made by one generator sort in the order they were made, even within one millisecond, and always
match the contract's name pattern.
"""

from __future__ import annotations

from collections.abc import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
# Two characters per lookup: 13 of them cover the 130 bits of 26 characters (the top two are zero).
# The first 5 cover the 48 bits of milliseconds (shifted up by the 80 random bits), the other 8 the rest.
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_MS_SHIFTS = tuple(range(40, -1, -10))
_RANDOM_SHIFTS = tuple(range(70, -1, -10))


def _ms_chars(ms: int) -> str:
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"timestamp out of range: {ms}")
    return "".join([_PAIRS[(ms >> shift) & 1023] for shift in _MS_SHIFTS])


def _random_chars(random_part: int) -> str:
    return "".join([_PAIRS[(random_part >> shift) & 1023] for shift in _RANDOM_SHIFTS])


def encode_id(ms: int, random_part: int) -> str:
    """The id for a millisecond timestamp and an 80-bit random part."""
    if not 0 <= random_part < 1 << _RANDOM_BITS:
        raise ValueError("random part out of range")
    return _ms_chars(ms) + _random_chars(random_part)


class IdGenerator:
    """Makes monotonic ids from an injected clock (ms) and random source (bytes)."""

    def __init__(self, clock_ms: Callable[[], int], random_bytes: Callable[[int], bytes]) -> None:
        self._clock_ms = clock_ms
        self._random_bytes = random_bytes
        self._last_ms = -1
        self._last_random = 0
        self._ms_text = ""  # the first 10 characters of the last id: the same within a millisecond
        self._head = ""  # the first 24 characters of the last id: the same until the count carries

    def new(self) -> str:
        """A new id, greater than every id this generator made before."""
        ms = self._clock_ms()
        if ms <= self._last_ms:
            # Same millisecond (or the clock stepped back): count up from the last id.
            ms = self._last_ms
            random_part = self._last_random + 1
            if random_part & 1023:  # no carry out of the last two characters: only they change
                self._last_random = random_part
                return self._head + _PAIRS[random_part & 1023]
            if random_part >= 1 << _RANDOM_BITS:
                ms, random_part = ms + 1, 0
        else:
            random_part = int.from_bytes(self._random_bytes(10), "big")
            # Leave headroom so that counting up within one millisecond cannot overflow.
            random_part >>= 1
        if ms != self._last_ms:
            self._ms_text = _ms_chars(ms)
        self._last_ms, self._last_random = ms, random_part
        text = self._ms_text + _random_chars(random_part)
        self._head = text[:24]
        return text
