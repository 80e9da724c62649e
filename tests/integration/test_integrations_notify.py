"""notify through Apprise's json:// plugin against a local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from apprise.plugins.telegram import NotifyTelegram

from cloud_bridge.errors import BridgeError, ConfigError, PermanentError, TransientError
from cloud_bridge.integrations import notify as notify_module
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.notify import NotifyIntegration
from tests.support.net import free_port
from tests.support.notify import HeldHook, held_hook

__all__ = ["held_hook"]  # fixtures

CANARY = "canary-SECRET-5f3a"
LONG_ANSWER = 64 * 1024 * 1024


class Hook:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self.flaky_fails = True  # /flaky answers 500 while set
        self.streamed = 0  # bytes of /long's answer written before the client hung up

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.startswith("/long"):
            return await self.long_answer(request)
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": json.loads(body)})
        if request.path.startswith("/broken"):
            auth = request.headers.get("Authorization", "")
            decoded = base64.b64decode(auth.partition(" ")[2] or "").decode(errors="replace")
            return web.Response(status=500, text=f"bad auth {auth} ({decoded}) path {request.path}")
        if request.path.startswith("/flaky") and self.flaky_fails:
            return web.Response(status=503)
        return web.json_response({"ok": True})

    async def long_answer(self, request: web.Request) -> web.StreamResponse:
        """200, then a body of LONG_ANSWER bytes, written until the client hangs up."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * 65536
        with contextlib.suppress(ConnectionError):
            while self.streamed < LONG_ANSWER:
                await response.write(chunk)
                self.streamed += len(chunk)
        return response


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    recorder = Hook()
    app = web.Application()
    app.router.add_post("/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    recorder.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", recorder.port).start()
    yield recorder
    await runner.cleanup()


def make(hook: Hook, urls: str) -> NotifyIntegration:
    env = {"ONCALL_URLS": urls.format(port=hook.port, canary=CANARY)}
    return NotifyIntegration.from_config({"targets": {"oncall": {"urls_env": "ONCALL_URLS"}}}, env)


def job(**payload: Any) -> Job:
    return Job("dev-1", "acme", "i-1", "notify", {"target": "oncall", "body": "Boiler 3 hot", **payload}, 1, {})


async def test_fans_out_to_every_url(hook: Hook) -> None:
    notify = make(hook, "json://ops:{canary}@127.0.0.1:{port}/a, json://127.0.0.1:{port}/b")
    outcome = await notify.execute(job(title="Alarm"))
    assert outcome == Outcome("notified 2 services")
    assert sorted(r["path"] for r in hook.requests) == ["/a", "/b"]
    first = next(r for r in hook.requests if r["path"] == "/a")
    assert first["json"]["title"] == "Alarm"
    assert first["json"]["message"] == "Boiler 3 hot"
    assert first["headers"]["Authorization"] == "Basic " + base64.b64encode(f"ops:{CANARY}".encode()).decode()


async def test_failure_is_transient_and_never_leaks(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    notify = make(hook, "json://ops:{canary}@127.0.0.1:{port}/broken/{canary}")
    with pytest.raises(TransientError) as info:
        await notify.execute(job())
    assert info.value.code == "notify_failed"
    assert len(hook.requests) == 1  # the server did get it, and echoed the secret back
    basic = base64.b64encode(f"ops:{CANARY}".encode()).decode()
    for text in (str(info.value), repr(info.value), repr(info.value.__dict__), repr(notify.__dict__), caplog.text):
        assert CANARY not in text
        assert basic not in text


async def test_a_retry_is_sent_only_to_the_services_that_did_not_take_it(hook: Hook) -> None:
    """A target of two services, one down: the retry sent the notification to both again, and the service that
    was up posted it once per try."""
    notify = make(hook, "json://127.0.0.1:{port}/up, json://127.0.0.1:{port}/flaky")
    failures = []
    for _ in range(2):
        with pytest.raises(TransientError) as info:
            await notify.execute(job())
        failures.append(info.value)
    assert [r["path"] for r in hook.requests] == ["/up", "/flaky", "/flaky"]
    assert [error.code for error in failures] == ["notify_failed", "notify_failed"]
    assert failures[0].detail == (
        "notify target 'oncall': 1 of 2 services did not accept it; 1 took it and are not sent it again"
    )
    hook.flaky_fails = False
    assert await notify.execute(job()) == Outcome("notified 2 services (1 on an earlier try)")
    assert [r["path"] for r in hook.requests] == ["/up", "/flaky", "/flaky", "/flaky"]
    # another attempt of the intent (a resend after the operator's retry) is a new notification to every service
    assert await notify.execute(dataclasses.replace(job(), attempt=2)) == Outcome("notified 2 services")
    assert [r["path"] for r in hook.requests][4:] == ["/up", "/flaky"]


async def test_a_long_answer_is_not_read_into_memory(hook: Hook) -> None:
    """Apprise reads an answer through requests without streaming: a target answering 200 and a body without end
    grew the bridge by its every byte (200 MB: 380 MB more) until the kernel killed it. The body is dropped after
    64 KiB and the connection closed: the server could not write its 64 MiB."""
    notify = make(hook, "json://127.0.0.1:{port}/long")
    assert await notify.execute(job()) == Outcome("notified 1 services")
    assert 0 < hook.streamed < LONG_ANSWER


async def test_a_telegram_bot_token_is_masked_whole_in_the_debug_log(
    hook: Hook, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tgram://{bot_id}:{secret}/{chat}: urlsplit takes the token for a host and a port, and only the host (the
    bot id) was masked: Apprise's "Telegram POST URL: .../bot***:{secret}/sendMessage" and urllib3's request
    line showed the secret half at DEBUG. Apprise's own Telegram plugin, sending to the local server."""
    monkeypatch.setattr(NotifyTelegram, "notify_url", f"http://127.0.0.1:{hook.port}/bot")
    caplog.set_level(logging.DEBUG)
    secret = "AAH" + CANARY.replace("-", "")
    notify = make(hook, f"tgram://123456789:{secret}/987654")
    assert await notify.execute(job()) == Outcome("notified 1 services")
    assert [r["path"] for r in hook.requests] == [f"/bot123456789:{secret}/sendMessage"]  # the token went out
    assert "Telegram POST URL" in caplog.text and "sendMessage" in caplog.text
    assert secret not in caplog.text


async def test_a_key_with_url_escapes_is_masked_as_sent(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    """A key with a '/' or '+' (base64 keys have both) in a query value: Apprise's "Loaded JSON URL" line, urllib3's
    request line and the requests error's text ("Max retries exceeded with url: /x?apikey=...") write it
    percent-encoded (`%2F`, `%2B`), and only its decoded form (with '+' read as a space) was masked."""
    caplog.set_level(logging.DEBUG)
    key = f"Key{os.urandom(8).hex()}/a+b"  # one no earlier test registered (the masking is process-wide)
    written = quote(key, safe="")
    forms = {key, written, quote(key), quote_plus(key), key.replace("+", " ")}
    notify = make(hook, f"json://127.0.0.1:{{port}}/alarm?+X-Token={written}, "
                        f"json://127.0.0.1:{free_port()}/down?-apikey={written}&cto=2")  # fmt: skip
    with pytest.raises(TransientError) as info:
        await notify.execute(job())
    assert str(info.value).startswith("notify target 'oncall': 1 of 2 services did not accept it")  # still says so
    assert [r["headers"]["X-Token"] for r in hook.requests] == [key]  # the key went out as written
    assert "Loaded JSON URL" in caplog.text and "Socket Exception" in caplog.text  # the lines that quoted it
    assert "/down?apikey=***" in caplog.text
    for text in (caplog.text, str(info.value)):
        assert not [form for form in forms if form in text]


async def test_unreachable_service_is_transient() -> None:
    notify = NotifyIntegration.from_config(
        {"targets": {"oncall": {"urls_env": "U"}}}, {"U": f"json://127.0.0.1:{free_port()}/x?cto=2&rto=2"}
    )
    with pytest.raises(TransientError):
        await notify.execute(job())


async def test_a_provider_that_never_answers_holds_nothing_of_anyone_else(
    hook: Hook, held_hook: HeldHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apprise dispatched every call with a deadline to one pool per process (cpus + 4 threads); a call it
    gave up on kept its thread reading. As many calls to a provider that never finishes its answer as that
    pool has threads, and every notification of every tenant timed out until the provider let go."""
    monkeypatch.setattr(notify_module, "CALL_TIMEOUT_S", 0.5)
    apprise_pool = min(32, (os.cpu_count() or 1) + 4)
    slow = NotifyIntegration.from_config(
        {"concurrency": apprise_pool, "targets": {"oncall": {"urls_env": "U"}}},
        {"U": f"json://127.0.0.1:{held_hook.port}/hook?rto=300"},
    )
    calls = [asyncio.create_task(slow.execute(job())) for _ in range(apprise_pool)]
    for call in calls:
        with pytest.raises(TransientError):
            await call
    assert (held_hook.held, held_hook.answered) == (apprise_pool, 0)  # each still held, its thread still reading

    other = make(hook, "json://127.0.0.1:{port}/other")  # another tenant's own target
    assert await other.execute(job()) == Outcome("notified 1 services")
    assert [r["path"] for r in hook.requests] == ["/other"]
    with pytest.raises(TransientError) as info:
        await slow.execute(job())  # its own threads are all still held: it waits for one, not for ever
    assert info.value.code == "notify_timeout"


async def test_unknown_target_is_permanent(hook: Hook) -> None:
    notify = make(hook, "json://127.0.0.1:{port}/a")
    with pytest.raises(BridgeError) as info:
        await notify.execute(job(target="ceo"))
    assert isinstance(info.value, PermanentError)
    assert info.value.code == "policy_target"
    assert hook.requests == []


@pytest.mark.parametrize(
    "target",
    [
        {"urls": f"json://u:{CANARY}@127.0.0.1/x"},
        {"urls_env": "BAD"},
        {"urls_env": "EMPTY"},
        {"urls_env": "MISSING"},
        {"urls_env": "GOOD", "title": "x"},
    ],
)
def test_bad_config(target: dict[str, str]) -> None:
    env = {"BAD": f"notaservice://{CANARY}", "EMPTY": " , ", "GOOD": "json://127.0.0.1/x"}
    with pytest.raises(ConfigError) as info:
        NotifyIntegration.from_config({"targets": {"oncall": target}}, env)
    assert CANARY not in str(info.value)


@pytest.mark.parametrize("template", ["discord:/123456789012345678/{token}", "json:/ops:{token}@hooks.example/alarm"])
def test_a_url_apprise_cannot_load_is_not_logged(template: str, caplog: pytest.LogCaptureFixture) -> None:
    """Our error names the URL by its position; Apprise's own line at ERROR printed it whole, token and all, at
    every start and reload: "Unsupported URL: discord:/123.../{token}" for a slash left out."""
    caplog.set_level(logging.DEBUG)
    token = f"Tok{os.urandom(12).hex()}"  # one no earlier test registered (the masking is process-wide)
    urls = f"json://127.0.0.1/ok {template.format(token=token)}"
    with pytest.raises(ConfigError) as info:
        NotifyIntegration.from_config({"targets": {"oncall": {"urls_env": "U"}}}, {"U": urls})
    assert "URL #2 is not a valid Apprise URL" in str(info.value)
    assert any(r.name == "apprise" and r.levelno >= logging.ERROR for r in caplog.records)  # it did say why
    assert token not in caplog.text
