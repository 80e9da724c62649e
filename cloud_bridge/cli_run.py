"""`cloud-bridge run` and `cloud-bridge reload`: the running node, and asking it to read its config again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import click

from cloud_bridge.cli_common import (
    clean_errors,
    data_dir_option,
    json_option,
    run_async,
    seconds,
    settings_from,
    store_options,
)
from cloud_bridge.errors import BridgeError
from cloud_bridge.settings import BridgeSettings, default_node_id
from intent_contract.logs import LogFormat
from intent_contract.logs import configure as configure_logging
from intent_contract.loop_errors import AcceptErrors
from intent_contract.runtime import raise_descriptor_limit, tune_garbage_collector
from intent_contract.service_notify import READY, STOPPING, notify

log = logging.getLogger(__name__)


@click.command()
@store_options
@click.option("--node-id", default=None, help="This node's name in leases and logs (default: host-pid-random).")
@click.option("--listen", default="0.0.0.0:8883", show_default=True, help="MQTT over TLS listen address HOST:PORT.")
@click.option("--ws-listen", default=None, help="Optional WebSocket-over-TLS listen address HOST:PORT.")
@click.option("--http-listen", default="0.0.0.0:8443", show_default=True, help="HTTPS address: enrollment, /healthz.")
@click.option(
    "--metrics-listen",
    envvar="CLOUD_BRIDGE_METRICS_LISTEN",
    default=None,
    metavar="HOST:PORT",
    help="Serve GET /metrics and /healthz over plain HTTP here (env CLOUD_BRIDGE_METRICS_LISTEN; off by default):"
    " loopback or a private scrape network only.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Server certificate chain (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="Server private key (PEM).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Logging level.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="CLOUD_BRIDGE_LOG_FORMAT",
    help="Log lines as text, or as one JSON object each for log shippers (env CLOUD_BRIDGE_LOG_FORMAT).",
)
@clean_errors
def run(
    *,
    data_dir: Path,
    store: str | None,
    config_path: Path | None,
    node_id: str | None,
    listen: str,
    ws_listen: str | None,
    http_listen: str,
    metrics_listen: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_level: str,
    log_format: LogFormat,
) -> None:
    """Run the bridge until SIGINT/SIGTERM; SIGHUP (or `cloud-bridge reload`) reloads the config."""
    # Held from here until the node runs, then taken (one reload): a SIGHUP in the start's first second, before
    # its handler, took the default action and killed the node (a `kill -HUP` or a log rotation after a restart).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    from cloud_bridge.node import Bridge  # noqa: PLC0415 - keeps the other commands quick to start

    node = node_id or default_node_id()  # the same name across reloads
    notify_socket = os.environ.get("NOTIFY_SOCKET")  # systemd's, for Type=notify (intent_contract.service_notify)

    def load() -> BridgeSettings:
        return settings_from(
            data_dir,
            config_path=config_path,
            listen=listen,
            ws_listen=ws_listen,
            http_listen=http_listen,
            metrics_listen=metrics_listen,
            tls_cert=tls_cert,
            tls_key=tls_key,
            store=store,
            node_id=node,
        )

    settings = load()
    configure_logging(log_level, log_format)
    descriptors = raise_descriptor_limit()  # logged once the node runs: a start that fails says one line
    if log_level != "debug":  # httpx logs every provider request at INFO: one line per intent
        logging.getLogger("httpx").setLevel(logging.WARNING)

    async def serve() -> None:
        bridge = Bridge(settings, load=load)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        AcceptErrors().install(loop)  # past the descriptor limit: a line per listener per 10 s, not 2,000 a second
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        async def reload() -> None:
            with contextlib.suppress(BridgeError):  # refused: logged with every problem, the old config stays
                await bridge.reload()

        def on_hangup() -> None:
            task = loop.create_task(reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            await bridge.start()
            tune_garbage_collector()
            log.info("file descriptors: up to %d", descriptors)
            click.echo(f"cloud-bridge listening: {settings.listening()}", err=True)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one held since the start reloads now
            notify(notify_socket, READY)
            await stop.wait()
            log.info("stopping")
        finally:
            notify(notify_socket, STOPPING)
            await bridge.stop()
        log.info("stopped")  # after a SIGTERM, once everything is closed (nothing said it before)

    run_async(serve())


@click.command()
@data_dir_option
@click.option("--timeout", default="60s", show_default=True, help="How long to wait for the bridge's answer.")
@json_option
@clean_errors
def reload(data_dir: Path, timeout: str, as_json: bool) -> None:
    """Make the bridge running on --data-dir read its config again (as SIGHUP does) and say how it went.

    New jobs use the new integrations and keys, running ones finish on the old; a config with a
    problem is refused and the running one stays in force (exit 1). With several nodes, reload each.
    """
    from cloud_bridge.control import request  # noqa: PLC0415 - keeps the other commands quick to start

    wait = seconds(timeout, "--timeout")

    async def ask() -> dict[str, Any]:
        try:
            async with asyncio.timeout(wait):
                return await request(data_dir, "reload")
        except TimeoutError:
            raise click.ClickException(f"the bridge did not answer within {timeout}") from None

    answer = run_async(ask())
    if as_json:
        click.echo(json.dumps(answer))
    if not answer.get("ok"):
        raise click.ClickException(f"reload refused, the running config stays in force: {answer.get('error')}")
    if not as_json:
        enabled = ", ".join(answer.get("integrations") or []) or "none"
        click.echo(f"reloaded: config generation {answer.get('generation')}, integrations {enabled}")
        if cert := answer.get("certificate"):
            from cloud_bridge.cert_info import describe  # noqa: PLC0415 - as `request` above

            click.echo(describe(cert["names"], cert["not_after"]))
