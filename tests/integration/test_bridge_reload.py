"""Reloading a running node's config: new jobs take the new key, a running job ends on the integration it
started with (closed after it), and a config with problems is refused whole, with every problem named."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from cloud_bridge import node
from cloud_bridge.errors import ConfigError
from cloud_bridge.integrations.http import HttpIntegration
from cloud_bridge.node import Bridge
from cloud_bridge.settings import BridgeSettings, build_settings
from intent_contract.passwords import hash_password
from tests.support.bridge import Harness, envelope, until
from tests.support.dashboard import PASSWORD, log_in, overview_status, session
from tests.support.net import free_port

OLD, NEW = "old-token-5c1d", "new-token-9e4b"


class Provider:
    """Answers 200 to any bearer token and records it; /v1/slow waits until released."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.match_info["name"], request.headers.get("Authorization", "")))
        if request.match_info["name"] == "slow":
            await self.release.wait()
        return web.json_response({"ok": True})


@pytest.fixture
async def provider(server_cert_files: dict[str, Path]) -> AsyncIterator[tuple[Provider, int]]:
    recorder = Provider()
    app = web.Application()
    app.router.add_post("/v1/{name}", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert_files["cert"], server_cert_files["key"])
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    yield recorder, port
    recorder.release.set()
    await runner.cleanup()


def config_text(port: int, ca: Path, token_file: Path, extra: str = "") -> str:
    return f"""
[bridge]
retry_base = 0.05
retry_cap = 0.2
{extra}
[integrations.http]
allow_private_hosts = ["127.0.0.1"]
ca_file = "{ca}"

[integrations.http.credentials.crm]
base_urls = ["https://127.0.0.1:{port}/v1/"]
methods = ["POST"]
token_file = "{token_file}"

[tenants.acme.policy]
kinds = ["http.request"]
http_credentials = ["crm"]
"""


@contextlib.asynccontextmanager
async def reloadable(
    tmp_path: Path, config: Path, tls: dict[str, Path], listeners: tuple[str, ...]
) -> AsyncIterator[tuple[Bridge, dict[str, str]]]:
    """A started node on free ports for `listeners`, reading `config` and the `tls` cert and key files again at
    each reload; yields it and its listen addresses, and stops it."""
    ports = {f: f"127.0.0.1:{free_port()}" for f in listeners}

    def load() -> BridgeSettings:
        return build_settings(
            data_dir=tmp_path / "data", env={}, config_path=config, tls_cert=tls["cert"], tls_key=tls["key"],
            node_id="node-a", **ports,
        )  # fmt: skip

    bridge = Bridge(load(), load=load)
    await bridge.start()
    try:
        yield bridge, ports
    finally:
        await bridge.stop()


def call(intent_id: str, name: str) -> object:
    return envelope(intent_id, "http.request", {"credential": "crm", "method": "POST", "path": f"/{name}"})


async def test_reload_swaps_the_key_for_new_jobs_and_lets_running_ones_finish(
    tmp_path: Path, server_cert_files: dict[str, Path], provider: tuple[Provider, int]
) -> None:
    recorder, port = provider
    token_file, config = tmp_path / "token", tmp_path / "bridge.toml"
    token_file.write_text(OLD)
    config.write_text(config_text(port, server_cert_files["ca"], token_file))
    listeners = ("listen", "http_listen", "metrics_listen")
    async with reloadable(tmp_path, config, server_cert_files, listeners) as (bridge, _ports):
        settings = bridge.settings
        harness = Harness(bridge, settings, server_cert_files["ca"])
        client = await harness.connect(await harness.enroll())
        client.send([call("slow-1", "slow")])  # type: ignore[list-item]
        await until(lambda: ("slow", f"Bearer {OLD}") in recorder.seen, what="the slow job in flight, old key")
        old = bridge.integrations["http.request"]
        assert isinstance(old, HttpIntegration)

        token_file.write_text(NEW)
        assert await bridge.reload() == ["http.request"]
        assert bridge.generation == 2
        client.send([call("fast-1", "fast")])  # type: ignore[list-item]
        await until(lambda: ("fast", f"Bearer {NEW}") in recorder.seen, what="a new job with the new key")
        assert old._client is not None and not old._client.closed  # still serving the slow job

        recorder.release.set()
        await until(lambda: client.states().get("slow-1", [""])[-1] == "delivered", what="the slow job ends well")
        await until(lambda: old._client is not None and old._client.closed, what="the old integration closed")

        # A config with problems is refused whole: every problem named, nothing changed.
        config.write_text(
            config_text(port, server_cert_files["ca"], tmp_path / "missing-token").replace("kinds", "kind")
        )
        with pytest.raises(ConfigError) as refused:
            await bridge.reload()
        assert "tenants.acme.policy.kind: unknown key" in refused.value.detail
        assert "token_file: cannot read the file it names (FileNotFoundError" in refused.value.detail
        # [bridge] keys take a restart: refused too, with the reason.
        config.write_text(config_text(port, server_cert_files["ca"], token_file, "max_attempts = 3"))
        with pytest.raises(ConfigError, match=r"bridge\.max_attempts changed, which takes a restart"):
            await bridge.reload()
        config.write_text(
            config_text(port, server_cert_files["ca"], token_file)
            + '\n[dashboard.operators]\nbob = "scrypt$16384$8$1$x$y"\n'
        )
        with pytest.raises(ConfigError, match=r"\[dashboard\] changed, which takes a restart"):
            await bridge.reload()
        assert bridge.generation == 2
        client.send([call("fast-2", "fast")])  # type: ignore[list-item]
        await until(lambda: client.states().get("fast-2", [""])[-1] == "delivered", what="still the new key")
        assert recorder.seen[-1] == ("fast", f"Bearer {NEW}")
        await client.stop()
    assert all(OLD not in repr(v) and NEW not in repr(v) for v in (settings, bridge.settings))


async def test_rows_claimed_ahead_before_a_reload_start_on_the_new_key(
    tmp_path: Path, server_cert_files: dict[str, Path], provider: tuple[Provider, int]
) -> None:
    """docs/operations.md: a reload's integrations take every job that starts from then on. A row the executor had
    claimed ahead of its one slot started, after the reload, on the integration of its claim: with the key
    just rotated away (revoked at the provider, the reason to rotate), such rows failed, up to the slots'
    number per pool."""
    recorder, port = provider
    token_file, config = tmp_path / "token", tmp_path / "bridge.toml"
    token_file.write_text(OLD)
    one_slot = "\n[integrations.http]\nconcurrency = 1\n"
    text = config_text(port, server_cert_files["ca"], token_file).replace("\n[integrations.http]\n", one_slot, 1)
    config.write_text(text)
    async with reloadable(tmp_path, config, server_cert_files, ("listen", "http_listen")) as (bridge, _ports):
        harness = Harness(bridge, bridge.settings, server_cert_files["ca"])
        client = await harness.connect(await harness.enroll())
        client.send([call("slow-1", "slow")])  # type: ignore[list-item]
        await until(lambda: ("slow", f"Bearer {OLD}") in recorder.seen, what="the slow job holds the one slot")
        client.send([call("next-1", "next")])  # type: ignore[list-item]

        def claimed_ahead() -> bool:
            return [row.state for row in bridge.store.intents.find("next-1")] == ["running"]

        await until(claimed_ahead, what="next-1 claimed ahead of the slot")
        token_file.write_text(NEW)
        await bridge.reload()
        recorder.release.set()
        await until(lambda: client.states().get("next-1", [""])[-1] == "delivered", what="next-1 delivered")
        assert ("next", f"Bearer {NEW}") in recorder.seen, recorder.seen
        assert ("next", f"Bearer {OLD}") not in recorder.seen
        await client.stop()


def _served_certificate(port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return served


async def test_reload_reads_the_tls_certificate_again_and_refuses_a_pair_that_does_not_load(
    tmp_path: Path, ca: trustme.CA, server_cert_files: dict[str, Path]
) -> None:
    """A renewed certificate (same paths) was ignored by a reload that answered "reloaded": new connections got
    the old one until a restart, and a key not matching its certificate was reported nowhere until the next
    start failed."""
    cert, key, config = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "bridge.toml"

    def issue() -> trustme.LeafCert:
        leaf = ca.issue_cert("127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return leaf

    first = issue()
    config.write_text('[tenants.acme.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n')
    tls, listeners = {"cert": cert, "key": key}, ("listen", "http_listen", "ws_listen")
    async with reloadable(tmp_path, config, tls, listeners) as (bridge, ports):
        listening = [int(address.rsplit(":", 1)[1]) for address in ports.values()]
        before = [await asyncio.to_thread(_served_certificate, port, server_cert_files["ca"]) for port in listening]
        second = issue()
        await bridge.reload()
        after = [await asyncio.to_thread(_served_certificate, port, server_cert_files["ca"]) for port in listening]
        # The answer names what was taken (it said only "reloaded": was the renewed file the one read?).
        assert bridge.certificate is not None
        assert bridge.certificate.names == ("127.0.0.1",)
        assert bridge.certificate.sha256 == hashlib.sha256(_der(second)).hexdigest()
        # A key that is not the certificate's: refused, and the running pair stays.
        ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
        with pytest.raises(ConfigError, match="cannot load TLS certificate"):
            await bridge.reload()
        kept = [await asyncio.to_thread(_served_certificate, port, server_cert_files["ca"]) for port in listening]
    assert len(set(before)) == 1 and len(set(after)) == 1  # the same certificate on every port
    assert before != after
    assert (before[0], after[0]) == (_der(first), _der(second))
    assert kept == after


def _der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def test_a_reload_that_would_strand_live_intents_is_refused(
    tmp_path: Path, server_cert_files: dict[str, Path], provider: tuple[Provider, int]
) -> None:
    """A config file read while it was being written (cut off before `[integrations.http]`) still parses, and
    its reload ended 9 of 10 queued intents failed/no_integration at once, for good."""
    recorder, port = provider
    token_file, config = tmp_path / "token", tmp_path / "bridge.toml"
    token_file.write_text(OLD)
    whole = config_text(port, server_cert_files["ca"], token_file)
    config.write_text(whole)
    async with reloadable(tmp_path, config, server_cert_files, ("listen", "http_listen")) as (bridge, _ports):
        harness = Harness(bridge, bridge.settings, server_cert_files["ca"])
        client = await harness.connect(await harness.enroll())
        client.send([call("slow-1", "slow"), call("after-1", "fast")])  # type: ignore[list-item]
        await until(lambda: ("slow", f"Bearer {OLD}") in recorder.seen, what="the slow job in flight")
        config.write_text(whole[: whole.index("[integrations.http]")] + whole[whole.index("[tenants.acme.policy]") :])
        with pytest.raises(ConfigError, match=r"no integration would serve http\.request \([12] queued or running\)"):
            await bridge.reload()
        assert bridge.generation == 1
        config.write_text(whole)  # the whole file is back
        recorder.release.set()
        await until(
            lambda: [client.states().get(i, [""])[-1] for i in ("slow-1", "after-1")] == ["delivered"] * 2,
            what="both delivered",
        )
        assert await bridge.reload() == ["http.request"]
        await client.stop()


async def test_a_reload_ends_a_removed_operators_sessions_and_those_signed_with_the_old_session_key(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """docs/dashboard.md: removing an operator ends their sessions at the next reload. The reload was refused
    ("[dashboard] changed, which takes a restart"), and a new session key file was taken as no change at all:
    reloaded, and every cookie signed with the old key still opened the dashboard."""
    hashes = {"alice": hash_password(PASSWORD), "bob": hash_password(PASSWORD)}
    key_file, config = tmp_path / "session-key", tmp_path / "bridge.toml"
    key_file.write_text("k" * 40)

    def write(operators: dict[str, str]) -> None:
        lines = "".join(f'{name} = "{hashed}"\n' for name, hashed in operators.items())
        config.write_text(f'[dashboard]\nsession_key_file = "{key_file}"\n[dashboard.operators]\n{lines}')

    write(hashes)
    listeners = ("listen", "http_listen", "metrics_listen")
    async with reloadable(tmp_path, config, server_cert_files, listeners) as (bridge, _ports):
        settings = bridge.settings
        harness = Harness(bridge, settings, server_cert_files["ca"])
        alice, bob = await session(harness), (await log_in(harness, "bob")).session
        assert bob is not None
        assert [await overview_status(harness, c) for c in (alice, bob)] == [200, 200]

        write({"alice": hashes["alice"]})
        await bridge.reload()
        assert [await overview_status(harness, c) for c in (alice, bob)] == [200, 303]
        assert (await log_in(harness, "bob")).session is None

        key_file.write_text("n" * 40)  # rotated: every session signed with the old key ends
        await bridge.reload()
        assert await overview_status(harness, alice) == 303
        assert await overview_status(harness, await session(harness)) == 200
        assert bridge.generation == 3

        write({})  # turning the dashboard off (or on) still takes a restart: its pages are mounted at start
        with pytest.raises(ConfigError, match=r"\[dashboard\] changed, which takes a restart"):
            await bridge.reload()


async def test_a_reload_builds_the_integrations_off_the_event_loop(
    tmp_path: Path, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload built every integration on the event loop: each client's TLS context takes tens of milliseconds, and
    50 tenants with their own http and smtp took 2.8 s, in which no device, health check or ack was served (a
    balancer checking every 2 s took the node out at each reload). They are built in the node's own threads."""
    token_file, config = tmp_path / "token", tmp_path / "bridge.toml"
    token_file.write_text(OLD)
    config.write_text("")
    built_in: list[int] = []
    real = node.build_tenant_integrations

    def recorded(tenants: Any) -> Any:
        built_in.append(threading.get_ident())
        return real(tenants)

    monkeypatch.setattr(node, "build_tenant_integrations", recorded)
    listeners = ("listen", "http_listen", "metrics_listen")
    async with reloadable(tmp_path, config, server_cert_files, listeners) as (bridge, ports):
        config.write_text(
            "".join(
                f'[tenants.t{n}.integrations.http.credentials.crm]\nbase_urls = ["https://api{n}.example/v1/"]\n'
                f'token_file = "{token_file}"\n[tenants.t{n}.integrations.smtp]\nhost = "smtp{n}.example"\n'
                for n in range(60)
            )
        )
        built_in.clear()  # the start's build, in whatever thread the start runs it
        await bridge.reload()
        assert len(bridge.tenant_integrations) == 60
        url = f"http://{ports['metrics_listen']}/healthz"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
    assert built_in and threading.get_ident() not in built_in  # before: the event loop's own thread


async def test_a_stop_during_a_reload_waits_for_it_and_closes_what_it_built(
    tmp_path: Path, server_cert_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGTERM while a reload read its files: the node stopped under it, and the reload then carried on against
    the stopped node, swapped in the integrations it built (an SMS client open) and nobody closed them."""
    token_file, config = tmp_path / "token", tmp_path / "bridge.toml"
    token_file.write_text(OLD)
    config.write_text(
        f'[integrations.sms]\naccount_sid = "AC1"\nauth_token_file = "{token_file}"\nfrom = "+15550100"\n'
    )
    caplog.set_level(logging.INFO, logger="cloud_bridge.node")
    ports = {f: f"127.0.0.1:{free_port()}" for f in ("listen", "http_listen")}
    entered, release = threading.Event(), threading.Event()
    loads = 0

    def load() -> BridgeSettings:
        nonlocal loads
        loads += 1
        if loads > 1:  # the reload's: held while the stop begins
            entered.set()
            release.wait(30)
        return build_settings(
            data_dir=tmp_path / "data", env={}, config_path=config, tls_cert=server_cert_files["cert"],
            tls_key=server_cert_files["key"], node_id="node-a", **ports,
        )  # fmt: skip

    bridge = Bridge(load(), load=load)
    await bridge.start()
    started = bridge.integrations["sms.send"]
    reloading = asyncio.create_task(bridge.reload())
    await asyncio.to_thread(entered.wait, 30)
    stopping = asyncio.create_task(bridge.stop())
    waits = "the stop waits for the reload under way"
    await until(lambda: stopping.done() or waits in caplog.text, what="the stop under way")
    release.set()
    await stopping
    with contextlib.suppress(ConfigError):
        await reloading
    assert bridge.integrations["sms.send"] is not started  # the reload applied, before the stop went on
    for integration in (started, bridge.integrations["sms.send"]):
        assert integration._client.is_closed  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="the bridge is stopping"):
        await bridge.reload()


async def test_a_reload_of_a_certificate_out_of_its_validity_is_refused_and_the_running_one_stays(
    tmp_path: Path, ca: trustme.CA, server_cert_files: dict[str, Path]
) -> None:
    """A stale or wrong certificate file (one that had expired) was taken by a reload that answered "reloaded":
    every device refused the bridge at its next connect. Refused, naming the certificate and when it ended."""
    cert, key, config = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "bridge.toml"

    def issue(**validity: datetime.datetime) -> trustme.LeafCert:
        leaf = ca.issue_cert("127.0.0.1", **validity)
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return leaf

    good = issue()
    config.write_text('[tenants.acme.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n')
    now = datetime.datetime.now(datetime.UTC)
    async with reloadable(tmp_path, config, {"cert": cert, "key": key}, ("listen",)) as (bridge, ports):
        [port] = [int(address.rsplit(":", 1)[1]) for address in ports.values()]
        issue(not_before=now - datetime.timedelta(days=400), not_after=now - datetime.timedelta(days=1))
        with pytest.raises(ConfigError, match=r"TLS certificate .*server.pem expired at 20\d\d-.*devices would refuse"):
            await bridge.reload()
        issue(not_before=now + datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=400))
        with pytest.raises(ConfigError, match="is not valid before"):
            await bridge.reload()
        served = await asyncio.to_thread(_served_certificate, port, server_cert_files["ca"])
    assert served == _der(good)
    assert bridge.generation == 1
