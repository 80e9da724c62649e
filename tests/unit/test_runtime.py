"""The garbage collector tuning both long-running commands apply after start-up."""

import gc
from collections.abc import Iterator

import pytest

from intent_contract.runtime import YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    kept = [[n] for n in range(1000)]  # alive at start-up (lists: objects the collector tracks)
    _young, middle, old = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    tune_garbage_collector()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
