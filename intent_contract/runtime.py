"""Process-wide runtime tuning shared by the two long-running commands."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move everything allocated so far out of the garbage collector's sight.

    The modules, the broker and the stores made at start-up live as long as the process; a full
    collection scanned them all again and paused the event loop for 25-35 ms, a few times a minute,
    which showed in the latency tail (bench/findings.md F11). Call once, after start-up.
    """
    gc.collect()
    gc.freeze()
