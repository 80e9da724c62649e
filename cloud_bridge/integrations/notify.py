"""notify: fan-out to chat and push services through Apprise, one named target per set of URLs.

Apprise URLs carry tokens, so they are secrets: read from the environment or a file, never logged.
Apprise is blocking (requests), so each notification runs in a thread of the integration's own, at most
`concurrency` of them (`threads.BoundedThreads`: not the event loop's default pool), and the bridge stops
waiting for it after CALL_TIMEOUT_S. Not in Apprise's own pool either: its deadlines dispatch every
service call to one pool per process, and a provider dripping its answer for ever kept each abandoned
call's thread reading; once that pool was full every notification of every tenant timed out, until the
bridge restarted, whose exit then waited for those threads. Here Apprise sends in the calling thread, one
service after another.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from functools import cache
from typing import Any, Final
from urllib.parse import unquote, unquote_plus, urlsplit

import apprise

from cloud_bridge.config import parse_section
from cloud_bridge.config.integrations import NotifyConfig
from cloud_bridge.errors import ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.requests_bodies import bounded_bodies
from cloud_bridge.integrations.requests_redirects import same_origin_redirects
from cloud_bridge.integrations.threads import BoundedThreads
from cloud_bridge.secrets import Secret, redact_in_logs

log = logging.getLogger(__name__)

_SEPARATORS: Final = re.compile(r"[\s,]+")
# The bridge stops waiting for a notification (a free thread included) after this long (Apprise's own default
# per service): notify_timeout, retried. The thread keeps its place until its call ends.
CALL_TIMEOUT_S: Final = 60.0
# How many intent attempts' partial deliveries one integration remembers (those still being retried).
KEEP_PARTIAL: Final = 4096


class Accepted:
    """Which services of a target took each intent attempt that did not reach them all, so that a retry sends
    only to the others. A retry sent to every URL again: a target of Slack and a Telegram bot with a revoked
    token posted the same alarm to Slack at every try, eight times. Kept in memory, per integration (a retry
    on another node, or after a restart or a reload, sends to every service again); a worker thread records
    what a service took, also after the bridge stopped waiting for it, so the next try skips it."""

    def __init__(self, keep: int = KEEP_PARTIAL) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._taken: OrderedDict[tuple[str, str], set[int]] = OrderedDict()

    def taken(self, key: tuple[str, str]) -> frozenset[int]:
        """The positions of the target's URLs that took this attempt on an earlier try."""
        with self._lock:
            return frozenset(self._taken.get(key, ()))

    def add(self, key: tuple[str, str], index: int) -> None:
        with self._lock:
            self._taken.setdefault(key, set()).add(index)
            self._taken.move_to_end(key)
            while len(self._taken) > self._keep:
                self._taken.popitem(last=False)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._taken.pop(key, None)


def _secret_parts(url: str) -> list[str]:
    """The pieces of an Apprise URL that may be tokens, for log redaction."""
    parts = [url]
    try:
        split = urlsplit(url)
    except ValueError:
        return parts
    if split.password:
        parts += [split.password, unquote(split.password)]
        userinfo = f"{unquote(split.username or '')}:{unquote(split.password)}"
        parts.append(base64.b64encode(userinfo.encode()).decode())
    # The "host" may be a token, and so may what follows a ':' in it: tgram://{bot_id}:{secret}/{chat} takes the
    # bot token 123456789:AAH... for a host and a port. Only the host (the bot id) was masked, and Apprise's debug
    # line "Telegram POST URL: https://api.telegram.org/bot***:AAH.../sendMessage" showed the secret half.
    # Pieces with a '.' are host names (hooks.slack.com), not tokens.
    if "." not in split.netloc:
        parts.append(unquote(split.netloc))
    parts += [unquote(piece) for piece in re.split(r"[:@]", split.netloc) if piece and "." not in piece]
    parts += [unquote(s) for s in split.path.split("/") if s]
    # A query value as written, decoded with its '+' kept (Apprise sends `?+X-Token=a+b` as `a+b`), and as
    # parse_qsl reads it ('+' a space).
    for pair in split.query.split("&"):
        raw = pair.partition("=")[2]
        parts += [raw, unquote(raw), unquote_plus(raw)]
    return parts


@cache
def _load_plugins() -> None:
    """Make Apprise import its plugins once, here, rather than on first use in a worker thread.

    Some plugin modules import `imghdr`, which warns on Python 3.11/3.12; the warning is about
    Apprise's code, so it is silenced for that import only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*imghdr.*", category=DeprecationWarning)
        apprise.Apprise(asset=_asset()).add("json://localhost")


def _asset() -> apprise.AppriseAsset:
    # Keep Apprise's persistent store in memory: the bridge writes nothing it did not choose to. No deadline
    # and no async mode: Apprise then sends in the calling thread (ours), never in its process-wide pool.
    return apprise.AppriseAsset(storage_mode=apprise.PersistentStoreMode.MEMORY, async_mode=False, service_timeout=0)


def split_urls(secret: Secret) -> list[str]:
    """The Apprise URLs of a target's secret, each checked by Apprise; ConfigError naming the bad one by number."""
    _load_plugins()
    urls = [u for u in _SEPARATORS.split(secret.reveal()) if u]
    # Masked before Apprise reads them: it logs a URL it cannot load, whole, at ERROR ("Unparseable URL
    # tgram://...", "Could not load Discord URL: discord://..."), and that line showed the token at every
    # start and reload, while our own error named the URL by its position only.
    redact_in_logs(part for url in urls for part in _secret_parts(url))
    checker = apprise.Apprise(asset=_asset())
    for index, url in enumerate(urls, start=1):
        if not checker.add(url):
            raise ConfigError(f"URL #{index} is not a valid Apprise URL")
    if not urls:
        raise ConfigError("no URLs")
    return urls


class NotifyIntegration:
    """Sends notify jobs to the Apprise URLs of a named target."""

    kind = "notify"

    def __init__(self, targets: Mapping[str, tuple[Secret, ...]], *, concurrency: int = 2) -> None:
        _load_plugins()
        self.concurrency = concurrency
        self._targets = dict(targets)
        self._threads = BoundedThreads(concurrency, "notify")
        self._accepted = Accepted()
        for urls in self._targets.values():
            redact_in_logs(part for url in urls for part in _secret_parts(url.reveal()))

    @classmethod
    def from_settings(cls, config: NotifyConfig) -> NotifyIntegration:
        """Build from the validated `[integrations.notify]`."""
        targets = {name: tuple(Secret(u) for u in split_urls(t.needed("urls"))) for name, t in config.targets.items()}
        return cls(targets, concurrency=config.concurrency)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> NotifyIntegration:
        """Build from a plain `[integrations.notify]` table; every URL is checked by Apprise; ConfigError."""
        return cls.from_settings(parse_section(NotifyConfig, section, env, "integrations.notify"))

    async def execute(self, job: Job) -> Outcome:
        """Notify every URL of the target; any failure is retried (Apprise does not say which kind)."""
        target = job.payload.get("target")
        urls = self._targets.get(target) if isinstance(target, str) else None
        if urls is None or not isinstance(target, str):
            raise PermanentError("notify target is not configured at the bridge", code="policy_target")
        body, title = str(job.payload.get("body", "")), str(job.payload.get("title", ""))
        if not body:
            raise PermanentError("notify needs a body", code="bad_message")
        key = (job.idempotency_key, target)
        earlier = self._accepted.taken(key)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                failed = await self._threads.run(lambda: self._notify(urls, title, body, key, earlier))
        except TimeoutError:
            raise TransientError(f"notify target {target!r}: no answer in {CALL_TIMEOUT_S:.0f} s",
                                 code="notify_timeout") from None  # fmt: skip
        if failed:
            took = len(urls) - failed
            again = f"; {took} took it and are not sent it again" if took else ""
            raise TransientError(f"notify target {target!r}: {failed} of {len(urls)} services did not accept it"
                                 f"{again}", code="notify_failed")  # fmt: skip
        self._accepted.forget(key)
        log.debug("notify to target %s delivered to %d services", target, len(urls))
        before = f" ({len(earlier)} on an earlier try)" if earlier else ""
        return Outcome(f"notified {len(urls)} services{before}")

    def _notify(
        self, urls: tuple[Secret, ...], title: str, body: str, key: tuple[str, str], earlier: frozenset[int]
    ) -> int:
        """Send to each URL that has not taken this attempt yet, one after another; how many did not take it."""
        failed = 0
        for index, url in enumerate(urls):
            if index in earlier:
                continue
            sender = apprise.Apprise(asset=_asset())
            sender.add(url.reveal())
            try:
                # An endless answer grew the process until the kernel killed it; a redirect took a key elsewhere.
                with bounded_bodies(), same_origin_redirects():
                    taken = bool(sender.notify(body=body, title=title))
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; its text may hold the URL
                log.debug("apprise raised %s", exc.__class__.__name__)
                taken = False
            if taken:
                self._accepted.add(key, index)
            else:
                failed += 1
        return failed

    async def aclose(self) -> None:
        """Nothing to close: Apprise opens a connection per notification; a thread still running ends with it."""
