"""notify: fan-out to chat and push services through Apprise, one named target per set of URLs.

Apprise URLs carry tokens, so they are secrets: read from the environment or a file, never logged.
Apprise is blocking (requests), so each notification runs in a worker thread of the integration's own,
one per slot: not the event loop's default pool, where device authentication, admission and name
resolution run. A provider that answered slowly held those threads (six on two cores) for Apprise's
minute per call, and no device could connect or enroll meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise

from cloud_bridge.config import parse_section
from cloud_bridge.config.integrations import NotifyConfig
from cloud_bridge.errors import ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.secrets import Secret, redact_in_logs

log = logging.getLogger(__name__)

_SEPARATORS: Final = re.compile(r"[\s,]+")
# Apprise stops waiting for a notification's services after this long (its own default per service, made
# the bound of the whole call): the call then counts as not accepted, and the intent is retried.
CALL_TIMEOUT_S: Final = 60.0


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
    if split.hostname and "." not in split.hostname:
        parts.append(split.hostname)  # e.g. tgram://{bot_token}/...: the "host" is a token
    parts += [unquote(s) for s in split.path.split("/") if s]
    parts += [v for _, v in parse_qsl(split.query)]
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
    # Keep Apprise's persistent store in memory: the bridge writes nothing it did not choose to.
    return apprise.AppriseAsset(storage_mode=apprise.PersistentStoreMode.MEMORY)


def split_urls(secret: Secret) -> list[str]:
    """The Apprise URLs of a target's secret, each checked by Apprise; ConfigError naming the bad one by number."""
    _load_plugins()
    urls = [u for u in _SEPARATORS.split(secret.reveal()) if u]
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
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="notify")
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
        if urls is None:
            raise PermanentError("notify target is not configured at the bridge", code="policy_target")
        body, title = str(job.payload.get("body", "")), str(job.payload.get("title", ""))
        if not body:
            raise PermanentError("notify needs a body", code="bad_message")
        delivered = await asyncio.get_running_loop().run_in_executor(self._threads, self._notify, urls, title, body)
        if not delivered:
            raise TransientError(f"notify target {target!r}: a service did not accept it", code="notify_failed")
        log.debug("notify to target %s delivered to %d services", target, len(urls))
        return Outcome(f"notified {len(urls)} services")

    @staticmethod
    def _notify(urls: tuple[Secret, ...], title: str, body: str) -> bool:
        sender = apprise.Apprise(asset=_asset())
        for url in urls:
            sender.add(url.reveal())
        try:
            return bool(sender.notify(body=body, title=title, timeout=CALL_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; its text may hold the URL
            log.debug("apprise raised %s", exc.__class__.__name__)
            return False

    async def aclose(self) -> None:
        """Let the threads go once their calls end (Apprise opens a connection per notification)."""
        self._threads.shutdown(wait=False, cancel_futures=True)
