"""Bounded answers for Apprise's calls: the adapter for `requests`, the HTTP client Apprise's plugins use.

Apprise calls `requests` without `stream=True`, and requests then reads a whole answer into memory however
long it is: a notify target's server (a tenant's own, `[tenants.T.integrations.notify]`) that answered with an
endless body grew the bridge process by its every byte, until the kernel killed it, for every tenant (a
200 MB answer: 380 MB more). Inside `bounded_bodies()` (the notify integration's threads, and nowhere else) a
response's body is read up to `MAX_BODY` bytes, after which the connection is closed and the body ends there:
Apprise judges a notification by its status, and reads the body only for the detail of a failure.

What this touches in requests (a test holds it, `tests/unit/test_requests_bodies.py`): the public method
`requests.models.Response.iter_content`, wrapped once on the class, through which `Response.content` reads a
body; the wrapper is requests' own outside `bounded_bodies()`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Final

import requests

# Apprise's answers are small JSON or text; a notification's outcome is its status.
MAX_BODY: Final = 64 * 1024

_local = threading.local()
_ORIGINAL: Final = requests.models.Response.iter_content


def _bounded(response: requests.Response, chunks: Iterator[Any], limit: int) -> Iterator[Any]:
    read = 0
    for chunk in chunks:
        read += len(chunk)
        if read > limit:
            response.close()  # the rest is never read: the connection goes, not back to a pool
            return
        yield chunk


def _iter_content(self: requests.Response, chunk_size: int | None = 1, decode_unicode: bool = False) -> Iterator[Any]:
    chunks = _ORIGINAL(self, chunk_size, decode_unicode)  # type: ignore[call-overload]
    limit: int | None = getattr(_local, "limit", None)
    return chunks if limit is None else _bounded(self, chunks, limit)


def install() -> None:
    """Wrap `Response.iter_content` (once; idempotent)."""
    if requests.models.Response.iter_content is not _iter_content:
        requests.models.Response.iter_content = _iter_content  # type: ignore[method-assign]


@contextlib.contextmanager
def bounded_bodies(limit: int = MAX_BODY) -> Iterator[None]:
    """Within this block, in this thread, a response body read through requests ends after `limit` bytes."""
    install()
    _local.limit = limit
    try:
        yield
    finally:
        del _local.limit
