"""The bridge's own HTTPS endpoints through the test harness: health, metrics, plain HTTP, malformed enrollment."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from cloud_bridge import enroll_http
from cloud_bridge.errors import TransientError
from cloud_bridge.http_server import REQUEST_HEAD_TIMEOUT_S
from intent_contract import signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem, sign_device_token
from tests.support.bridge import Harness, counting, harness, rotation_document
from tests.support.mqtt_raw import read_until_closed, tls_connect
from tests.support.raw_http import raw_request

__all__ = ["counting", "harness"]  # fixtures


async def test_healthz_over_tls_and_no_metrics_there(harness: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{harness.base_url}/healthz", ssl=harness.client_ssl()) as response:
            assert response.status == 200
            assert (await response.json()) == {"status": "ok", "problems": []}
        # /metrics has a listener of its own (--metrics-listen), not the one that faces devices.
        async with http.get(f"{harness.base_url}/metrics", ssl=harness.client_ssl()) as response:
            assert response.status == 404


async def test_plain_http_is_not_served(harness: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{harness.settings.http_listen.port}/healthz") as response:
                await response.read()


async def test_malformed_enrollment_is_400(harness: Harness) -> None:
    status, body = await harness.post_enroll("whatever", "not a pem")
    assert status == 400
    assert body["error"] == "bad_public_key"
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{harness.base_url}/v1/enroll", data=b"{nope", ssl=harness.client_ssl()) as response,
    ):
        assert response.status == 400
        assert json.loads(await response.text())["error"] == "malformed"


async def test_deeply_nested_enrollment_is_400_without_a_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    body = b"[" * 16_000  # under the 16 KiB body limit; json.loads raises RecursionError on it
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{harness.base_url}/v1/enroll", data=body, ssl=harness.client_ssl()) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"] == "malformed"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_device_status_does_not_tell_a_forger_which_ids_exist(harness: Harness) -> None:
    real = await harness.enroll()
    forger_key = generate_private_key_pem()

    async def ask(token: str) -> tuple[int, object]:
        """The answer without its `time` (the bridge's clock, on every answer: checked to be there)."""
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{harness.base_url}/v1/device", headers=headers, ssl=harness.client_ssl()) as response,
        ):
            body = await response.json()
        assert abs(body.pop("time") / 1000 - time.time()) < 60
        return response.status, body

    def forged(device_id: str) -> str:
        return sign_device_token(forger_key, device_id, int(time.time()), lifetime_s=300, audience="cloud-bridge")

    existing = await ask(forged(real.device_id))
    assert existing == (401, {"error": "token_invalid", "detail": "the token does not verify for this device"})
    assert await ask(forged("no-such-device")) == existing
    assert await ask("not-a-jwt") == existing
    status, answer = await ask(real.token())
    assert isinstance(answer, dict)
    assert set(answer.pop("offline")) == {"key_id", "recipient", "signing_key"}  # only to the device's own key
    assert (status, answer) == (200, {"device_id": real.device_id, "status": "active"})


async def test_a_token_or_rotation_that_is_not_utf8_is_refused_like_any_bad_one(harness: Harness) -> None:
    """A byte that is not UTF-8 in Authorization was a 500 (PyJWT's UnicodeEncodeError) on this internet-facing API."""
    real = await harness.enroll()
    token = real.token().encode()
    for authorization in (b"Bearer \xff", b"Bearer eyJhbGciOiJFZERTQSJ9.\xff.AA", b"Bearer " + token + b"\xff",
                          b"Bearer " + token[:-3] + "\u00e9".encode()):  # fmt: skip
        status, response = await raw_request(harness, "GET", "/v1/device", [("Authorization", authorization)])
        assert status == 401, authorization
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == "token_invalid"
    # /v1/rotate-key takes no Authorization (its document is signed); bytes that are not UTF-8 there are malformed.
    for body in (b"\xff", b'{"kid": "\xff"}', b"\xff.\xff.\xff"):
        headers = [("Authorization", b"Bearer \xff"), ("Content-Type", b"application/json")]
        status, response = await raw_request(harness, "POST", "/v1/rotate-key", headers, body)
        assert status == 400, body
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == "rotation_malformed"
    status, _ = await raw_request(harness, "GET", "/v1/device", [("Authorization", b"Bearer " + token)])
    assert status == 200


async def test_a_body_that_is_not_its_content_encoding_is_malformed(harness: Harness) -> None:
    """Content-Encoding: gzip on a body that is not gzip was a 500 (RequestPayloadError out of request.read())."""
    headers = [("Content-Type", b"application/json"), ("Content-Encoding", b"gzip")]
    for path in ("/v1/enroll", "/v1/rotate-key"):
        status, response = await raw_request(harness, "POST", path, headers, b"garbage")
        assert status == 400, path
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == "malformed", path
    # Real gzip is still read: this one reaches the registry, which does not know the code.
    body = gzip.compress(json.dumps({"code": "nope", "public_key": "x"}).encode())
    status, response = await raw_request(harness, "POST", "/v1/enroll", headers, body)
    assert status in (400, 403) and json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] != "malformed"


async def test_a_body_nobody_reads_that_is_not_its_content_encoding_writes_no_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp reads the body of a request whose handler did not (a GET /healthz, a 404, a 405) after the answer;
    one that is not the deflate it claims raised RequestPayloadError there, logged "Unhandled exception" with
    three chained tracebacks (about 30 lines), for each such request from anyone, unthrottled."""
    caplog.set_level(logging.WARNING)
    headers = [("Content-Encoding", b"deflate")]
    for method, path, expected in [("GET", "/healthz", 200), ("GET", "/nowhere", 404), ("PUT", "/v1/enroll", 405)]:
        for _ in range(3):
            status, _response = await raw_request(harness, method, path, headers, b"\x00\xff" * 4000)
            assert status == expected, (method, path)
    server_lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert not [r for r in server_lines if r.exc_info], [r.getMessage() for r in server_lines]
    assert server_lines and all(getattr(r, "code", None) == "bad_request" for r in server_lines)
    assert "Can not decode content-encoding: deflate" in server_lines[0].getMessage()


@pytest.mark.parametrize(
    ("what", "lines"),
    [
        ("33 header lines", [f"X-Pad-{i}: {'a' * 100}" for i in range(33)]),
        ("a 9,000-byte line", ["Cookie: " + "a" * 9000]),
    ],
)
async def test_a_request_head_past_its_limits_is_refused_at_once(harness: Harness, what: str, lines: list[str]) -> None:
    """aiohttp reads up to 128 header lines of 8,190 bytes: a head sent that far and never finished held about
    2.5 MB of the bridge for the head's deadline (30 s), on the port that faces devices and browsers. Past 32
    lines, or a line past 8,190 bytes, it is answered 400 and closed as soon as that much is in."""
    head = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{line}\r\n" for line in lines)

    def scenario() -> bytes:
        # Within the deadline, so an answer can only be the limit's; before, the deadline closed it unanswered.
        with tls_connect(
            harness.settings.http_listen.port, str(harness.ca_file), timeout=REQUEST_HEAD_TIMEOUT_S + 20
        ) as sock:
            sock.sendall(head.encode())
            return read_until_closed(sock)

    answer = await asyncio.to_thread(scenario)
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), (what, answer[:100])


async def test_no_answer_of_the_api_may_be_stored_by_a_cache(harness: Harness) -> None:
    """A device's answers (its id, status, the bridge's `time`, its offline keys) carried no Cache-Control: a
    caching proxy in front of the bridge that ignores Authorization (docs/wire.md) could keep one device's
    `/v1/device` answer and give it to every device, with a `time` that grows stale (each edge then corrects its
    clock by it, and its tokens are refused). The dashboard's pages said `no-store`; the API now does too."""
    creds = await harness.enroll()
    code = harness.bridge.registry.create_code("acme", "boiler-8", 3600, time.time())
    enrollment = json.dumps({"code": code, "public_key": public_key_pem(generate_private_key_pem())}).encode()
    rotation = rotation_document(creds.device_id, creds.private_pem, generate_private_key_pem())
    json_type = ("Content-Type", b"application/json")
    requests: list[tuple[str, str, list[tuple[str, bytes]], bytes, int]] = [
        ("POST", "/v1/enroll", [json_type], enrollment, 201),
        ("POST", "/v1/enroll", [json_type], enrollment.replace(code.encode(), b"no-such-code"), 403),
        ("POST", "/v1/enroll", [json_type], b"{nope", 400),
        ("GET", "/v1/device", [("Authorization", f"Bearer {creds.token()}".encode())], b"", 200),
        ("GET", "/v1/device", [("Authorization", b"Bearer forged")], b"", 401),
        ("POST", "/v1/rotate-key", [], rotation, 200),
        ("POST", "/v1/rotate-key", [], b"nope", 400),
        ("GET", "/healthz", [], b"", 200),
        ("PUT", "/v1/device", [], b"", 405),
    ]
    for method, path, headers, body, expected in requests:
        status, response = await raw_request(harness, method, path, headers, body)
        assert status == expected, (method, path, response)
        head = response.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\ncache-control: no-store\r\n" in head + b"\r\n", (method, path, head)

    def failing(device_id: str) -> None:
        raise TransientError("the store is down", code="store_error")

    harness.bridge.registry.get = failing  # type: ignore[assignment,method-assign]
    status, response = await raw_request(harness, "GET", "/v1/device", [("Authorization", b"Bearer " + b"x.y.z")])
    assert status == 401  # not a JWT: the store is not asked
    token = creds.token().encode()
    status, response = await raw_request(harness, "GET", "/v1/device", [("Authorization", b"Bearer " + token)])
    assert status == 503, response
    assert b"\r\ncache-control: no-store\r\n" in response.split(b"\r\n\r\n", 1)[0].lower() + b"\r\n"
    async with aiohttp.ClientSession() as http, http.get(f"{harness.metrics_url}/healthz") as answer:
        assert answer.headers.get("Cache-Control") == "no-store"
    async with aiohttp.ClientSession() as http, http.get(f"{harness.metrics_url}/metrics") as answer:
        assert answer.headers.get("Cache-Control") == "no-store"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"code": "c", "public_key": "' + b"A" * 17_000 + b'"}', "over 16384 bytes"),
        (b'{"code": "c", "public_key": "' + b"A" * 5_000 + b'"}', "public_key is over 4096 characters"),
        (b'{"code": "c", "public_key": 5}', "public_key is not a string"),
        (b'{"public_key": "k"}', "code is missing"),
        (b'{"code": "c"', "not JSON"),
        (b'{"code": "\xff", "public_key": "k"}', "not UTF-8"),
        (b'["c", "k"]', "not a JSON object"),
    ],
)
async def test_a_malformed_enrollment_is_told_what_is_wrong(harness: Harness, body: bytes, says: str) -> None:
    """Every malformed enrollment was told "expected a JSON object {code, public_key}" or "expected string fields
    code and public_key (SPKI PEM)": a device maker who sent a certificate chain (over 4,096 characters) or a body
    over 16 KiB, both strings in a JSON object, read that what they sent was not what they had sent."""
    status, response = await raw_request(harness, "POST", "/v1/enroll", [("Content-Type", b"application/json")], body)
    assert status == 400, response[:200]
    answer = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert answer["error"] == "malformed"
    assert says in answer["detail"], answer


async def test_device_status_reads_the_bearer_scheme_in_any_case_and_says_it_on_401(harness: Harness) -> None:
    """`Authorization: bearer TOKEN` (an auth scheme is case-insensitive, RFC 9110 11.1; some HTTP stacks send it
    so) was refused `token_invalid`, "the token does not verify for this device", with the device's own good
    token; and no 401 said which scheme it wanted (WWW-Authenticate, which RFC 9110 requires on a 401)."""
    real = await harness.enroll()
    for scheme in (b"bearer", b"BEARER", b"Bearer"):
        authorization = scheme + b" " + real.token().encode()
        status, response = await raw_request(harness, "GET", "/v1/device", [("Authorization", authorization)])
        assert status == 200, (scheme, response)
    for headers in ([], [("Authorization", b"Basic dXNlcjpwYXNz")], [("Authorization", b"Bearer forged")]):
        status, response = await raw_request(harness, "GET", "/v1/device", headers)
        assert status == 401, headers
        head = response.split(b"\r\n\r\n", 1)[0].lower() + b"\r\n"
        assert b'\r\nwww-authenticate: bearer realm="cloud-bridge"\r\n' in head, (headers, head)


async def test_a_forger_cannot_tell_by_the_work_done_which_device_ids_exist(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged token or rotation for an id no device has was answered at once (one registry read), for a real
    device's id after a signature check and a read of its replaced keys: the same answer, but about 0.9 ms
    later of 1.8 on loopback, every time; so the time told a forger which ids exist, which docs/wire.md says
    the answer does not. Now both do the same work, in the same order; this checks the work, not the time."""
    real = await harness.enroll()
    unknown = real.device_id[:-1] + ("A" if real.device_id[-1] != "A" else "B")  # a device id nobody has
    assert harness.bridge.registry.get(unknown) is None
    forger = generate_private_key_pem()
    work: list[str] = []
    registry = harness.bridge.registry
    for name in ("get", "replaced_keys", "propose_key", "promote_key"):
        monkeypatch.setattr(registry, name, _recorded(work, name, getattr(registry, name)))
    monkeypatch.setattr(enroll_http, "verify_device_token", _recorded(work, "verify", enroll_http.verify_device_token))
    monkeypatch.setattr(signed, "verify", _recorded(work, "verify", signed.verify))

    async def status_of(device_id: str) -> tuple[list[str], int, object]:
        work.clear()
        token = sign_device_token(forger, device_id, int(time.time()), lifetime_s=300, audience="cloud-bridge")
        status, response = await raw_request(
            harness, "GET", "/v1/device", [("Authorization", f"Bearer {token}".encode())]
        )
        body = json.loads(response.split(b"\r\n\r\n", 1)[1])
        body.pop("time")
        return list(work), status, body

    async def rotation_of(device_id: str) -> tuple[list[str], int, object]:
        work.clear()
        document = rotation_document(device_id, forger, generate_private_key_pem())
        status, response = await raw_request(harness, "POST", "/v1/rotate-key", [], document)
        body = json.loads(response.split(b"\r\n\r\n", 1)[1])
        body.pop("time")
        return list(work), status, body

    assert await status_of(real.device_id) == await status_of(unknown)
    assert (await status_of(real.device_id))[0] == ["get", "verify", "replaced_keys"]
    assert await rotation_of(real.device_id) == await rotation_of(unknown)
    assert (await rotation_of(real.device_id))[0] == ["get", "verify", "replaced_keys"]


def _recorded(work: list[str], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """`call`, noting `name` in `work` each time it is called."""

    def recorded(*args: Any, **kwargs: Any) -> Any:
        work.append(name)
        return call(*args, **kwargs)

    return recorded
