"""The SSRF guard through the real http.request integration: aiohttp connects only where it was checked.

aiohttp asks its resolver only about names; a host it takes for an IP literal is connected to
directly. So every literal spelling must be refused before the request, every name at resolve time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from cloud_bridge.errors import PermanentError
from cloud_bridge.integrations.base import Outcome
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.integrations.ssrf import SsrfGuard
from tests.support.http_api import ENV, Recorder, api, config, failure, make_job, serve

__all__ = ["api"]

Resolver = Callable[[str, int], Awaitable[list[str]]]

LITERALS = [
    "2130706433",  # decimal
    "017700000001",  # octal, one part
    "0177.0.0.1",  # octal
    "0x7f.1",  # hex, short form: aiohttp takes it for a name and asks the resolver
    "0x7F000001",
    "0x7f.0.0.1",
    "127.1",  # short form
    "127.000.000.001",
    "127.0.0.1.",  # trailing dot
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",  # IPv4-compatible IPv6
    "[::1]",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # fullwidth digits: yarl's NFKC makes it 127.0.0.1
    "127\u30020\u30020\u30021",  # ideographic full stops
    "\u2460\u2461\u2466.0.0.1",  # circled digits
]


async def assert_refused(api: Recorder, server_cert_files: dict[str, Path], host: str) -> None:
    """A credential whose base URL has `host`: the request is refused `ssrf_blocked`, none is sent."""
    section = config(api.port, server_cert_files["ca"])
    section["allow_private_hosts"] = []
    section["credentials"]["crm"]["base_urls"] = [f"https://{host}:{api.port}/v1/"]
    error = await failure(HttpIntegration.from_config(section, ENV))
    assert isinstance(error, PermanentError)
    assert error.code == "ssrf_blocked"
    assert api.requests == []


@pytest.mark.parametrize("host", LITERALS)
async def test_every_literal_spelling_of_loopback_is_refused(
    api: Recorder, server_cert_files: dict[str, Path], host: str
) -> None:
    await assert_refused(api, server_cert_files, host)


@pytest.mark.parametrize("host", ["0x7f.1", "0x7F000001", "0x7f.0.0.1"])
async def test_literals_aiohttp_takes_for_names_are_checked_by_the_resolver(
    api: Recorder, server_cert_files: dict[str, Path], host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line: with the early literal check gone, the resolver still refuses them."""
    monkeypatch.setattr(SsrfGuard, "check_literal", lambda self, host: None)
    await assert_refused(api, server_cert_files, host)


@pytest.fixture
async def named_api(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Recorder]:
    """A server on 127.0.0.1 with a certificate for api.test only."""
    cert = ca.issue_cert("api.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    recorder = Recorder()
    runner = await serve(recorder, tmp_path / "cert.pem", tmp_path / "key.pem")
    yield recorder
    await runner.cleanup()


def named_integration(recorder: Recorder, ca_file: Path, allow: list[str], resolver: Resolver) -> HttpIntegration:
    section = config(recorder.port, ca_file)
    section["credentials"]["crm"]["base_urls"] = [f"https://api.test:{recorder.port}/v1/"]
    return HttpIntegration.from_config(section, ENV, guard=SsrfGuard(allow, resolver=resolver))


@pytest.mark.parametrize(
    "answers",
    [["127.0.0.1"], ["93.184.215.14", "127.0.0.1"], ["::ffff:127.0.0.1"], ["fec0::1"], ["fec0:0:0:ffff::1"]],
)
async def test_a_name_whose_dns_answer_is_private_is_refused(
    named_api: Recorder, server_cert_files: dict[str, Path], answers: list[str]
) -> None:
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers

    error = await failure(named_integration(named_api, server_cert_files["ca"], [], resolver))
    assert isinstance(error, PermanentError)
    assert error.code == "ssrf_blocked"
    assert lookups == ["api.test"]
    assert named_api.requests == []


async def test_every_new_connection_asks_the_guard_again(
    named_api: Recorder, server_cert_files: dict[str, Path]
) -> None:
    """No DNS cache: a name that rebinds to a private address is refused on the next connection."""
    answers = [["127.0.0.1"], ["10.0.0.7"]]  # 127.0.0.1 is exempt below, 10.0.0.7 is not

    async def resolver(host: str, port: int) -> list[str]:
        return answers.pop(0)

    integration = named_integration(named_api, server_cert_files["ca"], ["127.0.0.1"], resolver)
    try:
        # /long is not drained, so its connection closes and the next request needs a new one.
        long = make_job({"credential": "crm", "method": "GET", "path": "/long"})
        assert await integration.execute(long) == Outcome("HTTP 200")
        with pytest.raises(PermanentError) as info:
            await integration.execute(make_job({"credential": "crm", "method": "GET", "path": "/x"}, "i-2"))
    finally:
        await integration.aclose()
    assert info.value.code == "ssrf_blocked"
    assert answers == []
    assert [r["path"] for r in named_api.requests] == ["/v1/long"]
