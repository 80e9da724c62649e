"""No redirect to another origin for Apprise's calls: its services' keys do not go along to another host.

Apprise calls `requests` with redirects followed, and requests takes only `Authorization` off a request it
sends on to another host. A key Apprise sends in a header of its own (json:// `?+X-Api-Key=`, and the plugins
whose services take `X-Api-Key`, `Access-Token`, `X-Gotify-Key` and the like) went with the request to whatever
host a redirect named, a plain-http one included, and the notification counted as delivered. Inside
`same_origin_redirects()` (the notify integration's threads, and nowhere else) a redirect is followed only where
requests would keep `Authorization` (the same host, port and scheme; http to https on the standard ports);
any other is not followed: Apprise gets the 3xx, a failure, retried as any other (and the log says so).

What this touches in requests (a test holds it, `tests/integration/test_integrations_notify_redirects.py`): the method
`requests.Session.get_redirect_target`, wrapped once on the class, through which `resolve_redirects` learns
where to go next (None: nowhere); the wrapper is requests' own outside `same_origin_redirects()`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Final
from urllib.parse import urljoin, urlsplit

import requests

log = logging.getLogger(__name__)

_local = threading.local()
_ORIGINAL: Final = requests.Session.get_redirect_target


def _get_redirect_target(self: requests.Session, resp: requests.Response) -> str | None:
    location = _ORIGINAL(self, resp)
    if location is None or not getattr(_local, "active", False):
        return location
    target = urljoin(resp.url, location)
    if self.should_strip_auth(resp.url, target):
        # The host only: a Location may carry anything, a key of ours sent back included.
        host = urlsplit(target).hostname or "?"
        log.warning("a notify service answered HTTP %d to another origin (%s): not followed, so that no key of the"
                    " bridge goes along; the service counts as not taking it", resp.status_code, host)  # fmt: skip
        return None
    return location


def install() -> None:
    """Wrap `Session.get_redirect_target` (once; idempotent)."""
    if requests.Session.get_redirect_target is not _get_redirect_target:
        requests.Session.get_redirect_target = _get_redirect_target  # type: ignore[method-assign,assignment]


@contextlib.contextmanager
def same_origin_redirects() -> Iterator[None]:
    """Within this block, in this thread, requests follows a redirect only to the request's own origin."""
    install()
    _local.active = True
    try:
        yield
    finally:
        _local.active = False
