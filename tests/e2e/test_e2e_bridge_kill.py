"""The bridge SIGKILLed while it executes a backlog, then restarted: nothing lost, nothing run twice
beyond what docs/ledger.md allows (a job RUNNING at the crash runs again with the same key)."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from cloud_bridge.executor import AHEAD
from tests.support.net import wait_until
from tests.support.stack import SMTP_CONCURRENCY, Stack, ids

COUNT = 3000
KILLS = 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bridge_sigkilled_during_drain_loses_nothing_and_reruns_only_running_jobs(stack: Stack) -> None:
    stack.start_edge()
    app = stack.app("bkill-app")
    intent_ids = ids("bkill", COUNT)
    acked = stack.publish_all(app, intent_ids)
    assert len(acked) == COUNT

    rng = random.Random()
    try:
        for n in range(1, KILLS + 1):
            target = n * COUNT // (KILLS + 1)
            wait_until(lambda t=target: stack.sink.total() >= t, 180, interval=0.02, what=f"sink at {target}")
            time.sleep(rng.uniform(0, 0.2))
            assert stack.sink.distinct() < COUNT, "the drain ended before the kill: the test proves nothing"
            stack.bridge.kill()
            stack.bridge.start()
        stack.wait_delivered(intent_ids, timeout=240, what="delivery after the bridge restarts")
        wait_until(lambda: all("delivered" in app.status_of(i) for i in intent_ids), 60, 0.5, what="statuses")
    except TimeoutError:
        print(stack.diagnostics())
        raise

    executions = stack.sink.executions()
    lost = sorted(acked - executions.keys())
    assert not lost, f"{len(lost)} acked intents never executed, e.g. {lost[:5]}"
    states = stack.edge_states()
    assert all(states[i] == "delivered" for i in intent_ids)
    # Every execution of one intent carried the same Message-ID (one idempotency key: device:intent:1),
    # so a receiver that drops repeated Message-IDs (docs/integrations.md) delivers each exactly once.
    message_ids = stack.sink.message_ids()
    assert all(len(message_ids[i]) == 1 for i in intent_ids)
    assert len({next(iter(m)) for m in message_ids.values()}) == COUNT
    # Raw repeats at the SMTP server: only jobs the ledger had RUNNING at a crash, resumed after it.
    twice = {i for i, n in executions.items() if n > 1}
    resumes = Counter(r["intent_id"] for r in stack.bridge.audit(stack.device_id) if r["code"] == "resumed")
    over = sorted(i for i in twice if executions[i] > 1 + resumes[i])
    assert not over, f"run again without a crash while it was running: {[(i, executions[i]) for i in over[:5]]}"
    # Resumed: the calls under way at a crash (at most one per slot) and the rows claimed ahead for the
    # next free slots (docs/ledger.md); only the calls can have reached the sink before.
    assert sum(resumes.values()) <= AHEAD * SMTP_CONCURRENCY * KILLS
    assert sum(executions[i] - 1 for i in twice) <= SMTP_CONCURRENCY * KILLS
    resumed = set(resumes)
    print(
        f"bridge kill: {COUNT} intents, {KILLS} SIGKILLs of the bridge, 0 lost; {len(resumed)} jobs were running at "
        f"a crash and resumed, {len(twice)} of them reached the SMTP sink twice (same Message-ID)"
    )
