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


# Where the hard limit is unlimited, the soft one is raised to this (a descriptor table that large costs nothing
# until used; the kernel's fs.nr_open caps it anyway).
NOFILE_WANTED = 1 << 20


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now in force.

    Every connection is a descriptor. A container engine gives its processes a soft limit of 1,024 (with a hard
    one of 524,288), and a bridge serving 1,000 devices could accept no more: Python, unlike Go's runtime or
    nginx, keeps the soft limit it was given. The hard limit is the operator's (systemd's LimitNOFILE, a
    container's --ulimit): it is left as it is."""
    import resource  # noqa: PLC0415 - POSIX only, and only the long-running commands need it

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):  # above fs.nr_open: keep what we have
            return soft
        return wanted
    return soft
