"""Process-wide runtime tuning shared by the two long-running commands."""

from __future__ import annotations

import gc

# Young-generation threshold: allocations (less deallocations) between two young collections. At the
# default, 700, an attached outbox ran one young collection every ~70 intents, and each promoted the
# intents still waiting for their commit, so the older generations grew and were scanned again and
# again: 0.67 s of garbage collection in a 6 s attach run (a gc.callbacks probe). At 10,000 most of them
# have died first: 0.25 s, a young collection taking about 2.5 ms (bench/findings.md F22).
YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Move everything allocated so far out of the garbage collector's sight, and collect less often.

    The modules, the broker and the stores made at start-up live as long as the process; a full
    collection scanned them all again and paused the event loop for 25-35 ms, a few times a minute,
    which showed in the latency tail (bench/findings.md F11). Call once, after start-up.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
