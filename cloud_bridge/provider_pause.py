"""A provider's "slow down": a rate-limit answer is not the intent's fault, and it holds for every call to it.

A 429 Too Many Requests, or a 503 with a Retry-After (a provider saying when to come back), refuses the call
for the provider's own load, not for anything in the intent. So (outcome.after_run) the try does not count
toward `max_attempts` (the ledger gives it back as it reschedules the row, `Ledger.reschedule(counted=False)`:
`tries` counts the tries that do; the row's `next_run` tells that claim's hold from the next one's, same `tries`);
the row runs again at the Retry-After time (with none: backoff on the answers so far), until the intent's
deadline, or until `max_rate_limited` such answers in a row (the count rides in the row's detail, read back
at the next answer: `rate_limited_times`), so that a provider answering 429 for ever does not keep a row
for ever. And (`Pauses`) the executor claims no row of the pool the call ran in until that time, so that
a backlog does not spend one call per row on a provider that already said no; jobs already running finish.
The pause is per node: each node learns it from its own calls.

Before December 2026 a 429 spent a try like a 5xx and nothing slowed the other rows: 1,000 intents against a
provider allowing 5 calls/s made 7,503 calls, and 474 intents ended `failed`/`http_429`.
"""

from __future__ import annotations

import re

Pool = tuple[str, str]  # kind, and whose integration (tenant_pools.Pool): this module stays pure (outcome uses it)

# A rate-limited retry's detail starts with this, its count of rate-limit answers in a row (the latest included).
_NOTE = re.compile(r"^rate limited (\d+) times? in a row, not counted in max_attempts: ")


def slow_down(code: str, retry_after: float | None) -> bool:
    """Whether a transient error of `code` is the provider's rate limit: a 429, or a 503 that says when to retry."""
    status = code.rpartition("_")[2]
    return status == "429" or (status == "503" and retry_after is not None)


def rate_limited_times(code: str, detail: str) -> int:
    """How many rate-limit answers in a row a row's last `code` and `detail` record (0: its last try was not one)."""
    found = _NOTE.match(detail)
    return int(found.group(1)) if found and code.rpartition("_")[2] in ("429", "503") else 0


def rate_limited_detail(times: int, detail: str) -> str:
    """The detail of a retry after the `times`th rate-limit answer in a row (read back by `rate_limited_times`)."""
    return f"rate limited {times} time{'s' if times != 1 else ''} in a row, not counted in max_attempts: {detail}"


class Pauses:
    """Pools whose provider asked this node to slow down, each until a time (seconds since the epoch)."""

    def __init__(self) -> None:
        self._until: dict[Pool, float] = {}

    def pause(self, pool: Pool, until: float) -> None:
        """Claim no row of `pool` before `until` (a later pause of the pool extends it, an earlier one does not)."""
        self._until[pool] = max(until, self._until.get(pool, until))

    def paused(self, pool: Pool, now: float) -> bool:
        """Whether `pool` is paused at `now`."""
        until = self._until.get(pool)
        if until is not None and until <= now:
            del self._until[pool]
        return until is not None and until > now

    def wait(self, delay: float, now: float) -> float:
        """`delay`, or less so as to look again when the earliest pause ends. Ended pauses go here: `paused` is
        asked only of pools with room (or still configured), and an ended one kept made this 0 at every pass of
        the executor's loop, a busy loop while every slot was taken."""
        self._until = {pool: until for pool, until in self._until.items() if until > now}
        return min([delay, *(until - now for until in self._until.values())])
