"""Retry delays: exponential backoff with full jitter, as a pure function."""

from __future__ import annotations


def compute_backoff(attempt: int, *, base: float = 0.5, cap: float = 300.0, jitter: float = 1.0) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry).

    `jitter` is a number in [0, 1] drawn by the caller (random.random()); full jitter spreads
    retries over [0, min(cap, base * 2**(attempt-1))] so that many devices coming back at once do not
    retry in step.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be within [0, 1]")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return ceiling * jitter
