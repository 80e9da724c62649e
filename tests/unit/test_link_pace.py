"""LinkPace: batches sized to what the link carries (edge_outbox.link_pace)."""

from edge_outbox.link_pace import FIRST_BYTES, MIN_BYTES, TARGET_S, LinkPace

MAX_ITEMS, MAX_BYTES = 500, 512 * 1024


def test_a_fast_link_reaches_full_batches_in_a_few_steps() -> None:
    pace = LinkPace(MAX_ITEMS, MAX_BYTES)
    assert pace.limits(4000) == (FIRST_BYTES // 256, FIRST_BYTES)
    for _ in range(6):
        _items, max_bytes = pace.limits(4000)
        pace.sending()
        pace.went(max_bytes, max_bytes // 300, 0.01)
    assert pace.limits(4000) == (MAX_ITEMS, MAX_BYTES)
    assert pace.limits(7) == (7, MAX_BYTES)  # never past the send window's room


def test_a_slow_batch_sizes_the_next_to_what_the_link_carried_in_the_target_time() -> None:
    pace = LinkPace(MAX_ITEMS, MAX_BYTES)
    pace.sending()
    pace.went(16_000, 4, TARGET_S * 4)  # 400 B/s
    assert pace.budget == 4_000
    assert pace.limits(4000) == (1, 4_000)  # 4,000 bytes an intent: one at a time


def test_a_small_batch_that_went_quickly_does_not_grow_or_shrink_it() -> None:
    pace = LinkPace(MAX_ITEMS, MAX_BYTES)
    pace.sending()
    pace.went(300, 1, 1.0)
    assert pace.budget == FIRST_BYTES


def test_a_link_lost_with_a_batch_on_the_way_halves_it_and_only_then() -> None:
    pace = LinkPace(MAX_ITEMS, MAX_BYTES)
    pace.link_lost()
    assert pace.budget == FIRST_BYTES
    for _ in range(10):
        pace.sending()
        pace.link_lost()
    assert pace.budget == MIN_BYTES
    assert pace.limits(4000) == (MIN_BYTES // 256, MIN_BYTES)
