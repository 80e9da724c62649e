"""A cancellation that Python 3.11's `asyncio.wait_for` swallowed, raised again.

On 3.11, `wait_for` returns the awaited result instead of raising when that result arrives in the same
loop pass as the task's cancellation (CPython gh-86296, fixed in 3.12). aiomqtt waits for every PUBACK
and SUBACK with `wait_for`, so a loop that publishes went on with its cancellation lost: a graceful stop
right after the link came up waited for the health report's next interval (seen as an outbox that did
not exit within 15 s of SIGTERM, under a loaded disk), and a connection whose task group was tearing down
kept a loop waiting for an event that would never come.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError if the running task was asked to cancel; call it after an aiomqtt call.

    Only in tasks that nothing else cancels and then lets go on (the forwarder's per-connection loops):
    Python 3.11's TaskGroup leaves `cancelling()` set on its parent after any failure of a child.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
