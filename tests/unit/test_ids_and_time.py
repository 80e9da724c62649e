"""Sortable ids and the time/duration helpers."""

import itertools
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent_contract.backoff import compute_backoff
from intent_contract.ids import IdGenerator, encode_id
from intent_contract.names import is_name
from intent_contract.sizes import MAX_SIZE, parse_size
from intent_contract.timefmt import MAX_DURATION_S, format_ms, parse_duration, parse_rfc3339_ms


@given(st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=200))
def test_ids_sort_in_creation_order_even_when_clock_repeats_or_steps_back(clock_values: list[int]) -> None:
    ticks = iter(clock_values)
    gen = IdGenerator(lambda: next(ticks), os.urandom)
    ids = [gen.new() for _ in clock_values]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(is_name(i) and len(i) == 26 for i in ids)


def test_counting_up_within_a_millisecond_stays_monotonic() -> None:
    gen = IdGenerator(itertools.repeat(5).__next__, lambda n: b"\xff" * n)
    ids = [gen.new() for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000


def test_a_generated_id_is_its_millisecond_and_random_part_encoded() -> None:
    # The generator keeps the millisecond's characters from one id to the next: they must follow the clock.
    ticks = iter([7, 7, 2**47, 2**47, 2**47 + 1, 3])
    gen = IdGenerator(lambda: next(ticks), lambda n: bytes(range(n)))
    half = int.from_bytes(bytes(range(10)), "big") >> 1
    expected = [(7, half), (7, half + 1), (2**47, half), (2**47, half + 1), (2**47 + 1, half), (2**47 + 1, half + 1)]
    assert [gen.new() for _ in expected] == [encode_id(ms, part) for ms, part in expected]


_RANDOM_PARTS = st.one_of(
    st.integers(0, 2**79 - 1),
    st.integers(0, 2**79 - 1).map(lambda r: r | 1016),  # a few counts short of a carry out of the last pair
    st.integers(2**79 - 40, 2**79 - 1),
)


@given(st.lists(st.tuples(st.integers(0, 4), _RANDOM_PARTS), min_size=1, max_size=300))
def test_each_id_is_its_millisecond_and_count_encoded(steps: list[tuple[int, int]]) -> None:
    # The generator keeps the characters that did not change; each id must still be the plain encoding.
    ticks, parts = iter([tick for tick, _ in steps]), iter([part for _, part in steps])
    gen = IdGenerator(lambda: next(ticks), lambda n: (next(parts) << 1).to_bytes(n, "big"))
    drawn = iter([part for _, part in steps])  # the generator draws a random part only for a new millisecond
    last_ms, last_part, expected = -1, 0, []
    for tick, _ in steps:
        if tick <= last_ms:
            ms, part = last_ms, last_part + 1
        else:
            ms, part = tick, next(drawn)
        last_ms, last_part = ms, part
        expected.append(encode_id(ms, part))
    assert [gen.new() for _ in steps] == expected


@given(st.integers(min_value=0, max_value=2**48 - 1), st.integers(min_value=0, max_value=2**80 - 1))
def test_an_id_is_the_130_bit_number_in_crockford_base32(ms: int, random_part: int) -> None:
    value, digits = (ms << 80) | random_part, []
    for _ in range(26):  # the plain definition, five bits a character from the least significant
        digits.append("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[value & 31])
        value >>= 5
    assert encode_id(ms, random_part) == "".join(reversed(digits))


def test_encode_bounds() -> None:
    assert encode_id(0, 0) == "0" * 26
    assert encode_id(2**48 - 1, 2**80 - 1) == "7" + "Z" * 25  # 128 ones under two zero bits
    with pytest.raises(ValueError, match="timestamp"):
        encode_id(-1, 0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("1w", 604800), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_message_shows_format() -> None:
    with pytest.raises(ValueError, match="24h"):
        parse_duration("soon")


def test_durations_and_sizes_past_their_bounds_are_value_errors() -> None:
    """99999999999w and 1e309 overflowed later, in a store or a date format, as tracebacks."""
    assert parse_duration("100w") == 100 * 604800
    assert parse_duration(f"{MAX_DURATION_S}") == MAX_DURATION_S
    for text in ("99999999999w", f"{MAX_DURATION_S + 1}", "99999999999999999999999"):
        with pytest.raises(ValueError, match="longer than 100 years"):
            parse_duration(text)
    assert parse_size("8192G") == 8192 << 30
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    for text in ("1e309", "inf", "-inf", "nan", f"{MAX_SIZE + 2**11}", "9999999999G"):
        with pytest.raises(ValueError, match="size"):
            parse_size(text)
    assert (parse_size("1.5G"), parse_size("0.5K"), parse_size("2e9")) == (3 << 29, 512, 2_000_000_000)
    for text in ("0.5", "1.5", "0.3K"):  # were 0 ("no limit" to a queue limit), 1 and 307
        with pytest.raises(ValueError, match="not a whole number of bytes"):
            parse_size(text)


def test_rfc3339() -> None:
    assert parse_rfc3339_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_rfc3339_ms("1970-01-01T01:00:01+01:00") == 1000
    assert format_ms(1500) == "1970-01-01T00:00:01.500Z"
    with pytest.raises(ValueError, match="zone"):
        parse_rfc3339_ms("2030-01-01T00:00:00")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_ms("tomorrow")


@given(st.integers(1, 200), st.floats(0, 1))
def test_backoff_grows_to_cap_and_stays_within_it(attempt: int, jitter: float) -> None:
    delay = compute_backoff(attempt, base=0.5, cap=60, jitter=jitter)
    assert 0 <= delay <= min(60, 0.5 * 2 ** (attempt - 1))
    assert compute_backoff(attempt, base=0.5, cap=60, jitter=1.0) >= compute_backoff(
        max(1, attempt - 1), base=0.5, cap=60, jitter=1.0
    )
