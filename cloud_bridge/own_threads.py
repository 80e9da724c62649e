"""The bridge's own blocking work in a thread pool of its own, not the event loop's default one.

Device authentication, enrollment, admission's judging, the registry and fleet tables, the files a reload
reads: all short synchronous calls. Third-party libraries put their blocking calls in the default pool
(asyncio's and anyio's name lookups, for httpx and every `loop.create_connection` to a name), and a name
server or provider that answered slowly held its threads (six on two cores): no device could connect, enroll
or send until it answered. This pool is as large as the default one would be, so the bridge's own work has
the same room as before, which nothing outside the bridge can take.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

SIZE = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's own default
_POOL = ThreadPoolExecutor(max_workers=SIZE, thread_name_prefix="bridge-own")


async def own_thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(*args, **kwargs)` in the bridge's own pool, with the caller's context (as asyncio.to_thread)."""
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_POOL, call)
