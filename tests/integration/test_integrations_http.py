"""http.request against a real local HTTPS server: credentials, URL scope, redirects, SSRF, no leaks."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from cloud_bridge.errors import BridgeError, ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Outcome
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.integrations.http_status import MAX_RETRY_AFTER_S
from cloud_bridge.integrations.ssrf import SsrfGuard
from tests.support.http_api import CANARY, ENV, Recorder, api, config, failure, make_job, serve, trickling_server

__all__ = ["api"]  # fixture


@pytest.fixture
async def http(api: Recorder, server_cert_files: dict[str, Path]) -> AsyncIterator[HttpIntegration]:
    integration = HttpIntegration.from_config(config(api.port, server_cert_files["ca"]), ENV)
    yield integration
    await integration.aclose()


async def test_bearer_is_injected_with_idempotency_key_and_json(http: HttpIntegration, api: Recorder) -> None:
    job = make_job({"credential": "crm", "method": "POST", "path": "/contacts?x=1", "json": {"a": 1}})
    outcome = await http.execute(job)
    assert outcome == Outcome("HTTP 201")
    (seen,) = api.requests
    assert seen["path"] == "/v1/contacts?x=1"
    assert seen["headers"]["Authorization"] == f"Bearer {CANARY}"
    assert seen["headers"]["Idempotency-Key"] == job.idempotency_key
    assert json.loads(seen["body"]) == {"a": 1}
    assert seen["headers"]["Content-Type"] == "application/json"
    assert CANARY not in repr(outcome)


@pytest.mark.parametrize(
    ("credential", "header", "value"),
    [
        ({"auth": "basic", "username": "svc", "password_env": "CRM_PASSWORD", "token_env": None}, "Authorization",
         "Basic c3ZjOmNhbmFyeS1TRUNSRVQtNWYzYQ=="),
        ({"auth": "header", "header": "X-Api-Key"}, "X-Api-Key", CANARY),
    ],
)  # fmt: skip
async def test_basic_and_named_header_auth(
    api: Recorder, server_cert_files: dict[str, Path], credential: dict[str, Any], header: str, value: str
) -> None:
    section = config(api.port, server_cert_files["ca"], **credential)
    section["credentials"]["crm"] = {k: v for k, v in section["credentials"]["crm"].items() if v is not None}
    integration = HttpIntegration.from_config(section, ENV)
    try:
        await integration.execute(make_job({"credential": "crm", "method": "GET", "path": "/x", "body": "raw"}))
    finally:
        await integration.aclose()
    assert api.requests[0]["headers"][header] == value
    assert api.requests[0]["body"] == b"GET"[:0] + b"raw"


async def test_the_credentials_header_cannot_be_set_in_another_spelling(
    api: Recorder, server_cert_files: dict[str, Path]
) -> None:
    """`X_Api_Key` is `HTTP_X_API_KEY` to a CGI-style server, as the bridge's `X-Api-Key` is: it went out."""
    section = config(api.port, server_cert_files["ca"], auth="header", header="X-Api-Key")
    job = make_job({"credential": "crm", "method": "GET", "path": "/x", "headers": {"X_API_KEY": "device-key"}})
    error = await failure(HttpIntegration.from_config(section, ENV), job)
    assert error.code == "http_header_forbidden"
    assert api.requests == []


@pytest.mark.parametrize(
    "where",
    [
        {"path": "/../admin"},
        {"path": "/%2e%2e/admin"},
        {"path": "/a/%2E%2E/%2e%2e/admin"},
        {"path": "/a%2f..%2fadmin"},
        {"path": "/a\\..\\admin"},
        {"path": "/..;/admin"},  # Tomcat and Spring: '/v1/..;/admin' is '/admin'
        {"path": "/x/..;jsessionid=1/admin"},
        {"path": "/x;a=b/y"},
        {"path": "/x%3b/y"},
        {"path": "/%252e%252e/admin"},  # '..' after two decodings (a proxy, then the server)
        {"path": "/%25252e%25252e/admin"},
        {"path": "/a%252fb"},
        {"path": "/%c0%ae%c0%ae/admin"},  # overlong UTF-8 for '.'
        {"path": "/%u002e%u002e/admin"},  # IIS
        {"path": "/..%00/admin"},
        {"url": "https://127.0.0.1:{port}/v1/..;/admin"},
        {"url": "https://127.0.0.1:{port}/admin"},
        {"url": "https://127.0.0.1:{port}/v1x/"},
        {"url": "https://127.0.0.1:{port}/v1"},
        {"url": "https://user:pw@127.0.0.1:{port}/v1/x"},
        {"url": "https://127.0.0.1:{port}@evil.example/v1/x"},
        {"url": "http://127.0.0.1:{port}/v1/x"},
        {"url": "https://127.0.0.1:1/v1/x"},
        {"url": "https://localhost:{port}/v1/x"},
        {"url": "https://127.0.0.1:{port}/v1/x#frag"},
        {"url": "https://127.0.0.1:{port}/v1/x y"},
    ],
)
async def test_urls_outside_the_base_are_refused_before_any_request(
    http: HttpIntegration, api: Recorder, where: dict[str, str]
) -> None:
    payload = {"credential": "crm", "method": "GET", **{k: v.format(port=api.port) for k, v in where.items()}}
    with pytest.raises(PermanentError) as info:
        await http.execute(make_job(payload))
    assert info.value.code == "policy_url"
    assert api.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://ops:{secret}@127.0.0.1\u2100:{port}/v1/x",  # urlsplit's NFKC check quoted the netloc, password and all
        "https://[ops:{secret}@127.0.0.1:{port}/v1/x",
        "https://127.0.0.1:{secret}/v1/x",  # the port's parse quoted it
    ],
)
async def test_a_url_refused_is_never_quoted(http: HttpIntegration, api: Recorder, url: str) -> None:
    """The refusal's detail goes to the ledger, the audit and the app's status: a URL's userinfo is a credential."""
    payload = {"credential": "crm", "method": "GET", "url": url.format(port=api.port, secret=CANARY)}
    with pytest.raises(PermanentError) as info:
        await http.execute(make_job(payload))
    assert CANARY not in info.value.detail
    assert info.value.code == "policy_url"
    assert info.value.detail.startswith("URL refused: the URL")
    assert api.requests == []


def test_a_base_url_refused_is_never_quoted(server_cert_files: dict[str, Path]) -> None:
    """Config problems never quote a value (docs/config.md): the same parse quoted a base URL's password."""
    section = config(443, server_cert_files["ca"], base_urls=[f"https://ops:{CANARY}@api.example\u2100/v1/"])
    with pytest.raises(ConfigError) as info:
        HttpIntegration.from_config(section, ENV)
    assert CANARY not in str(info.value)
    assert "the URL does not parse" in str(info.value)


async def test_full_url_under_the_base_is_allowed(http: HttpIntegration, api: Recorder) -> None:
    url = f"https://127.0.0.1:{api.port}/v1/deep/er?q=1"
    assert await http.execute(make_job({"credential": "crm", "method": "GET", "url": url})) == Outcome("HTTP 200")
    assert api.requests[0]["path"] == "/v1/deep/er?q=1"


async def test_escapes_that_decode_to_plain_names_go_out_as_written(http: HttpIntegration, api: Recorder) -> None:
    path = "/files/100%25%20done/%2541.txt?a=%3b"
    assert await http.execute(make_job({"credential": "crm", "method": "GET", "path": path})) == Outcome("HTTP 200")
    assert api.requests[0]["path"] == "/v1/files/100%25%20done/%2541.txt?a=%3b"


async def test_method_unknown_credential_and_reserved_headers(http: HttpIntegration, api: Recorder) -> None:
    get = {"credential": "crm", "method": "GET", "path": "/x"}
    cases = [
        ({**get, "method": "DELETE"}, "policy_method"),
        ({**get, "credential": "billing"}, "policy_credential"),
        ({**get, "headers": {"authorization": "x"}}, "http_header_forbidden"),
        ({**get, "headers": {"Host": "evil"}}, "http_header_forbidden"),
        # What a provider's framework may take as another method, path or client: past the credential's scope
        *(
            ({**get, "method": "POST", "headers": {name: value}}, "http_header_forbidden")
            for name, value in [
                ("X-HTTP-Method-Override", "DELETE"),
                ("x-method-override", "DELETE"),
                ("X-Original-URL", "/admin/users"),
                ("X-Rewrite-URL", "/admin"),
                ("X-Forwarded-Host", "evil.example"),
                ("x-forwarded-for", "10.0.0.1"),
                ("Forwarded", "host=evil.example"),
                # the same to CGI-style servers (HTTP_X_HTTP_METHOD_OVERRIDE), which older ones passed on
                ("X_HTTP_Method_Override", "DELETE"),
                ("X_Forwarded_Host", "evil.example"),
                ("Idempotency_Key", "dev-2:i-1:1"),
                ("Proxy_Authorization", "x"),
            ]
        ),
        ({**get, "headers": {"X-Note": "a\r\nAuthorization: x"}}, "bad_request"),
        # Not tokens: a client that writes any name would send 'Host:evil.example: x', a second Host header.
        *(({**get, "headers": {name: "x"}}, "bad_request") for name in ["Host:evil.example", "X Api", "", "Caf\u00e9"]),
        ({**get, "headers": {"X-Note": "a\x01b"}}, "bad_request"),
    ]
    for payload, code in cases:
        with pytest.raises(PermanentError) as info:
            await http.execute(make_job(payload))
        assert info.value.code == code, payload
    assert api.requests == []  # none of them was sent
    assert api.requests == []


async def test_redirect_is_never_followed(http: HttpIntegration, api: Recorder) -> None:
    with pytest.raises(PermanentError) as info:
        await http.execute(make_job({"credential": "crm", "method": "GET", "path": "/redirect"}))
    assert info.value.code == "http_redirect"
    assert [r["path"] for r in api.requests] == ["/v1/redirect"]


async def test_connections_are_reused(http: HttpIntegration, api: Recorder) -> None:
    # One TLS connection per request used to cap the executor (the body was never read, so the
    # pool closed each connection). Error answers and short bodies keep the connection too.
    for n, path in enumerate(["/ok", "/missing", "/ok", "/fail", *["/ok"] * 6]):
        with contextlib.suppress(BridgeError):
            await http.execute(
                make_job({"credential": "crm", "method": "POST", "path": path, "json": {"n": n}}, f"i-{n}")
            )
    assert len(api.requests) == 10
    assert len({r["peer"] for r in api.requests}) == 1


async def test_a_long_body_is_not_read_but_the_request_succeeds(http: HttpIntegration, api: Recorder) -> None:
    assert await http.execute(make_job({"credential": "crm", "method": "GET", "path": "/long"})) == Outcome("HTTP 200")
    assert await http.execute(make_job({"credential": "crm", "method": "GET", "path": "/ok"}, "i-2")) == Outcome(
        "HTTP 200"
    )
    assert len({r["peer"] for r in api.requests}) == 2  # the first connection was dropped, not drained


@pytest.mark.parametrize(
    ("path", "error", "code", "retry_after"),
    [
        ("/busy", TransientError, "http_429", 7.0),
        ("/fail", TransientError, "http_503", None),
        ("/timeout", TransientError, "http_408", None),
        ("/missing", PermanentError, "http_404", None),
        ("/denied", TransientError, "http_401", None),  # the bridge's key: retried through a rotation
        ("/busy-odd", TransientError, "http_429", None),  # '³': str.isdigit() took it, float() raised
        ("/busy-forever", TransientError, "http_429", MAX_RETRY_AFTER_S),  # 400 digits: infinity, parked for good
        ("/busy-9999", TransientError, "http_429", MAX_RETRY_AFTER_S),
    ],
)
async def test_status_mapping(
    http: HttpIntegration, path: str, error: type[Exception], code: str, retry_after: float | None
) -> None:
    with pytest.raises(error) as info:
        await http.execute(make_job({"credential": "crm", "method": "GET", "path": path}))
    assert getattr(info.value, "code", None) == code
    assert getattr(info.value, "retry_after", None) == retry_after


async def test_an_odd_retry_after_on_a_2xx_does_not_send_the_request_again(
    http: HttpIntegration, api: Recorder
) -> None:
    """The header was read on every answer: '²' raised ValueError out of a 200, which the executor took as a
    failed call and sent the request again."""
    assert await http.execute(make_job({"credential": "crm", "method": "POST", "path": "/ok-odd-retry"})) == Outcome(
        "HTTP 200"
    )


async def test_an_answer_that_never_ends_ends_the_call(server_cert_files: dict[str, Path]) -> None:
    """A byte of a header every 50 ms: each wait is short, so `timeout` alone (per wait) never fired and the
    call, with its executor slot, was held for as long as the provider liked. The call is bounded too."""
    async with trickling_server(server_cert_files["cert"], server_cert_files["key"]) as port:
        http = HttpIntegration.from_config({**config(port, server_cert_files["ca"]), "timeout": 0.3}, ENV)
        error = await failure(http)
    assert isinstance(error, TransientError) and error.code == "http_timeout"


async def test_canary_never_leaks_when_provider_echoes_headers(
    http: HttpIntegration, api: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for path in ("/denied", "/fail", "/missing"):
        with pytest.raises(BridgeError) as info:
            await http.execute(make_job({"credential": "crm", "method": "POST", "path": path, "json": {"n": 1}}))
        texts += [str(info.value), repr(info.value), info.value.detail, repr(info.value.__dict__)]
        texts.append(repr(info.value.__cause__) + repr(info.value.__context__))
    outcome = await http.execute(make_job({"credential": "crm", "method": "GET", "path": "/ok"}))
    texts += [repr(outcome), repr(http.__dict__), caplog.text]
    # The server did receive the secret, and echoed it in its reason phrase and bodies.
    assert all(CANARY in r["headers"]["Authorization"] for r in api.requests)
    for text in texts:
        assert CANARY not in text
        assert "Y2FuYXJ5" not in text  # base64 of the canary's start


async def test_ssrf_guard_refuses_loopback_without_exemption(
    http: HttpIntegration, api: Recorder, server_cert_files: dict[str, Path]
) -> None:
    """Refused each time, also after another integration (that exempts the host) sent to the same URL."""
    literal = f"https://127.0.0.1:{api.port}/v1/x"
    assert await http.execute(make_job({"credential": "crm", "method": "GET", "url": literal})) == Outcome("HTTP 200")
    section = config(api.port, server_cert_files["ca"])
    section["allow_private_hosts"] = []
    section["credentials"]["crm"]["base_urls"].append(f"https://localhost:{api.port}/v1/")
    integration = HttpIntegration.from_config(section, ENV)
    try:
        for url in (literal, f"https://localhost:{api.port}/v1/x") * 2:
            with pytest.raises(PermanentError) as info:
                await integration.execute(make_job({"credential": "crm", "method": "GET", "url": url}))
            assert info.value.code == "ssrf_blocked"
    finally:
        await integration.aclose()
    assert len(api.requests) == 1


async def test_connects_to_the_checked_address_with_original_host_and_sni(
    ca: trustme.CA, server_cert_files: dict[str, Path], tmp_path: Path
) -> None:
    """The name is resolved once by the guard; TLS is verified for the name, not the IP."""
    cert = ca.issue_cert("api.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    recorder = Recorder()
    runner = await serve(recorder, tmp_path / "cert.pem", tmp_path / "key.pem")
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    section = config(recorder.port, server_cert_files["ca"])
    section["credentials"]["crm"]["base_urls"] = [f"https://api.test:{recorder.port}/v1/"]
    integration = HttpIntegration.from_config(section, ENV, guard=SsrfGuard(["127.0.0.1"], resolver=resolver))
    try:
        await integration.execute(make_job({"credential": "crm", "method": "GET", "path": "/x"}))
    finally:
        await integration.aclose()
        await runner.cleanup()
    assert lookups == ["api.test"]
    assert recorder.requests[0]["headers"]["Host"] == f"api.test:{recorder.port}"


async def test_tls_is_verified(api: Recorder, server_cert_files: dict[str, Path]) -> None:
    section = config(api.port, server_cert_files["ca"])
    del section["ca_file"]  # system roots do not know the test CA
    error = await failure(HttpIntegration.from_config(section, ENV))
    assert isinstance(error, TransientError)
    assert error.code == "http_connection"
    assert api.requests == []
