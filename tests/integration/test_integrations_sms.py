"""sms.send against a local Twilio-compatible HTTPS server that records requests."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud_bridge.errors import BridgeError, ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.sms import SmsIntegration
from tests.support.http_api import late_answer_server, trickling_server
from tests.support.net import free_port

CANARY = "canary-SECRET-5f3a"
ENV = {"TWILIO_AUTH_TOKEN": CANARY}


class FakeTwilio:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self.endless_written = 0

    async def messages(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append({"sid": request.match_info["sid"], "headers": dict(request.headers), "form": dict(form)})
        echo = {"code": 20003, "message": f"Authenticate: you sent {request.headers.get('Authorization')}"}
        sid = request.match_info["sid"]
        if sid == "ACbusy":
            return web.json_response({"code": 20429}, status=429, headers={"Retry-After": "3"})
        if sid == "ACdown":
            return web.json_response(echo, status=503)
        if sid == "ACauth":
            return web.json_response(echo, status=401, reason=f"No {request.headers.get('Authorization')}")
        if sid in ("ACdeep", "ACdeepfail"):  # a hostile or broken provider: 16,000 '[' in 16 KiB
            return web.Response(body=b"[" * 16_000, status=201 if sid == "ACdeep" else 400)
        if sid == "ACecho":
            return web.json_response({"sid": request.headers.get("Authorization")}, status=201)
        if sid == "ACodd":  # str.isdigit() takes it, float() refused it: a ValueError, not sms_429
            return web.json_response({"code": 20429}, status=429, headers={"Retry-After": "\u00b2"})
        if sid == "ACgzip":  # compressed although asked for identity: the body is not inflated
            body = gzip.compress(json.dumps({"sid": "SM0123456789abcdef", "pad": " " * 1_000_000}).encode())
            return web.Response(body=body, status=201, headers={"Content-Encoding": "gzip"})
        if sid == "ACendless":  # a body that never ends
            response = web.StreamResponse(status=201)
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, OSError):
                while True:
                    await response.write(b" " * 65536)
                    self.endless_written += 65536
        return web.json_response({"sid": "SM0123456789abcdef", "status": "queued"}, status=201)


@pytest.fixture
async def twilio(server_cert_files: dict[str, Path]) -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", fake.messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server_cert_files["cert"]), str(server_cert_files["key"]))
    fake.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", fake.port, ssl_context=context).start()
    yield fake
    await runner.cleanup()


def section(fake: FakeTwilio, ca: Path, sid: str = "ACok") -> dict[str, Any]:
    return section_at(fake.port, ca, sid)


def section_at(port: int, ca: Path, sid: str = "ACok") -> dict[str, Any]:
    return {"base_url": f"https://127.0.0.1:{port}", "account_sid": sid, "auth_token_env": "TWILIO_AUTH_TOKEN",
            "from": "+15550000000", "ca_file": str(ca)}  # fmt: skip


JOB = Job("dev-1", "acme", "i-1", "sms.send", {"to": "+4915112345678", "text": "Boiler 3 hot"}, 1, {})


async def run(fake: FakeTwilio, ca: Path, sid: str, job: Job = JOB) -> Outcome:
    sms = SmsIntegration.from_config(section(fake, ca, sid), ENV)
    try:
        return await sms.execute(job)
    finally:
        await sms.aclose()


async def transient_error(config: dict[str, Any]) -> TransientError:
    """Send JOB through an integration made from `config`; it must fail transiently: that error."""
    sms = SmsIntegration.from_config(config, ENV)
    try:
        with pytest.raises(TransientError) as info:
            await sms.execute(JOB)
    finally:
        await sms.aclose()
    return info.value


async def test_message_is_created_with_basic_auth_and_idempotency_token(
    twilio: FakeTwilio, server_cert_files: dict[str, Path]
) -> None:
    outcome = await run(twilio, server_cert_files["ca"], "ACok")
    assert outcome == Outcome("HTTP 201 sid SM0123456789abcdef")
    (seen,) = twilio.requests
    assert seen["form"] == {"To": "+4915112345678", "From": "+15550000000", "Body": "Boiler 3 hot"}
    assert seen["headers"]["Authorization"] == "Basic " + base64.b64encode(f"ACok:{CANARY}".encode()).decode()
    assert seen["headers"]["I-Twilio-Idempotency-Token"] == JOB.idempotency_key


@pytest.mark.parametrize(
    ("sid", "error", "code", "retry_after"),
    [
        ("ACbusy", TransientError, "sms_429", 3.0),
        ("ACdown", TransientError, "sms_503", None),
        ("ACauth", TransientError, "sms_401", None),
    ],
)
async def test_errors_map_to_bridge_errors(
    twilio: FakeTwilio,
    server_cert_files: dict[str, Path],
    sid: str,
    error: type[BridgeError],
    code: str,
    retry_after: float | None,
) -> None:
    with pytest.raises(error) as info:
        await run(twilio, server_cert_files["ca"], sid)
    assert info.value.code == code
    assert getattr(info.value, "retry_after", None) == retry_after


async def test_a_deeply_nested_answer_is_read_as_no_answer(
    twilio: FakeTwilio, server_cert_files: dict[str, Path]
) -> None:
    assert await run(twilio, server_cert_files["ca"], "ACdeep") == Outcome("HTTP 201 sid unknown")
    with pytest.raises(PermanentError) as info:
        await run(twilio, server_cert_files["ca"], "ACdeepfail")
    assert info.value.code == "sms_400"
    assert "provider code" not in info.value.detail


async def test_an_answers_body_is_read_only_as_far_as_its_bound(
    twilio: FakeTwilio, server_cert_files: dict[str, Path]
) -> None:
    """The whole body was read into memory and inflated before its size was checked (577 MiB for a 256 MiB
    body, 200 MiB for a 130 KB gzip bomb) and an endless one never ended the call. Now the answer is asked
    for uncompressed, read raw up to 64 KiB, and given up on past that: the message is sent, its sid unknown."""
    ca = server_cert_files["ca"]
    assert await run(twilio, ca, "ACgzip") == Outcome("HTTP 201 sid unknown")
    assert twilio.requests[-1]["headers"]["Accept-Encoding"] == "identity"
    assert await run(twilio, ca, "ACendless") == Outcome("HTTP 201 sid unknown")
    assert twilio.endless_written < 64 << 20  # the server wrote until the bridge hung up, not for ever
    with pytest.raises(TransientError) as info:
        await run(twilio, ca, "ACodd")
    assert (info.value.code, info.value.retry_after) == ("sms_429", None)


async def test_an_answer_that_never_ends_ends_the_call(server_cert_files: dict[str, Path]) -> None:
    """A byte of a header every 50 ms: httpx's timeout bounds each wait, so the call was held for ever."""
    async with trickling_server(server_cert_files["cert"], server_cert_files["key"]) as port:
        error = await transient_error({**section_at(port, server_cert_files["ca"]), "timeout": 0.3})
    assert error.code == "sms_timeout"


async def test_the_answers_body_is_read_within_the_calls_bound(server_cert_files: dict[str, Path]) -> None:
    """The call was bounded by three timeouts up to the answer's head only, and its body was given one more:
    an answer whose head came just before the bound held the call (and its slot) for four. Here the head comes
    at 2.5 timeouts and the body 0.75 of one later, past the bound: the body is given up on, the sid unknown."""
    body = json.dumps({"sid": "SM0123456789abcdef"}).encode()
    cert, key, ca = server_cert_files["cert"], server_cert_files["key"], server_cert_files["ca"]
    async with late_answer_server(cert, key, head_after=5.0, body_after=1.5, body=body) as port:
        sms = SmsIntegration.from_config({**section_at(port, ca), "timeout": 2}, ENV)
        try:
            assert await sms.execute(JOB) == Outcome("HTTP 201 sid unknown")
        finally:
            await sms.aclose()


async def test_canary_never_leaks(
    twilio: FakeTwilio, server_cert_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for sid in ("ACauth", "ACdown"):
        with pytest.raises(BridgeError) as info:
            await run(twilio, server_cert_files["ca"], sid)
        texts += [str(info.value), repr(info.value), repr(info.value.__dict__), repr(info.value.__context__)]
    assert "provider code 20003" in texts[0]
    echoed = await run(twilio, server_cert_files["ca"], "ACecho")
    sms = SmsIntegration.from_config(section(twilio, server_cert_files["ca"]), ENV)
    texts += [repr(echoed), repr(sms.__dict__), caplog.text]
    await sms.aclose()
    basic = base64.b64encode(f"ACauth:{CANARY}".encode()).decode()
    for text in texts:
        assert CANARY not in text
        assert basic not in text


async def test_tls_is_verified(twilio: FakeTwilio, server_cert_files: dict[str, Path]) -> None:
    config = section(twilio, server_cert_files["ca"])
    del config["ca_file"]
    assert (await transient_error(config)).code == "sms_connection"
    assert twilio.requests == []


async def test_bad_number_is_permanent_without_a_request(
    twilio: FakeTwilio, server_cert_files: dict[str, Path]
) -> None:
    bad = Job("dev-1", "acme", "i-2", "sms.send", {"to": "0151 123", "text": "x"}, 1, {})
    with pytest.raises(PermanentError):
        await run(twilio, server_cert_files["ca"], "ACok", bad)
    assert twilio.requests == []


@pytest.mark.parametrize(
    "change",
    [
        {"auth_token": CANARY},
        {"base_url": "http://api.twilio.com"},
        # taken, and every sms.send retried until it failed (`UnsupportedProtocol talking to `)
        {"base_url": "https://"},
        {"base_url": "https://api.twilio.com:70000"},
        {"base_url": "https://api twilio.com"},
        {"base_url": f"https://AC1:{CANARY}@api.twilio.com"},
        {"base_url": "https://api.twilio.com/?region=us1"},
        {"account_sid": "AC/../x"},
        {"from": ""},
        {"auth_token_env": "UNSET"},
        {"region": "us1"},
    ],
)
def test_bad_config(change: dict[str, Any]) -> None:
    config = {"account_sid": "AC1", "auth_token_env": "TWILIO_AUTH_TOKEN", "from": "+15550000000", **change}
    with pytest.raises(ConfigError) as info:
        SmsIntegration.from_config(config, ENV)
    assert CANARY not in str(info.value)
