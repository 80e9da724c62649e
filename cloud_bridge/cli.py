"""`cloud-bridge`: run the bridge, enroll and revoke devices, read the audit log.

The CLI only parses, builds BridgeSettings (the one place that reads the environment) and hands it
down. Library errors become one-line messages with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from cloud_bridge.audit import count_events
from cloud_bridge.certs import write_dev_certs
from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.registry import Device, Registry
from cloud_bridge.settings import BridgeSettings, build_settings
from intent_contract.runtime import freeze_startup_objects
from intent_contract.timefmt import format_ms, parse_duration, parse_rfc3339_ms

P = ParamSpec("P")
R = TypeVar("R")

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CLOUD_BRIDGE_DATA_DIR",
    default=Path("cloud-bridge-data"),
    show_default=True,
    help="Directory of the registry and ledger databases (env CLOUD_BRIDGE_DATA_DIR).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def clean_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn library errors into one-line click errors (exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BridgeError as exc:
            raise click.ClickException(exc.detail) from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _settings(data_dir: Path, **kwargs: Any) -> BridgeSettings:
    return build_settings(data_dir=data_dir, env=dict(os.environ), **kwargs)


def _registry(data_dir: Path) -> Registry:
    registry = Registry(data_dir / "registry.db")
    registry.open()
    return registry


def _run_async(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else format_ms(int(seconds * 1000))


def _parse_since(text: str, now: float) -> float:
    """RFC 3339 or a duration back from now ('2h')."""
    try:
        return now - parse_duration(text)
    except ValueError:
        return parse_rfc3339_ms(text) / 1000


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Cloud bridge: the only place provider keys live; devices submit intents over MQTT/TLS."""


@main.command()
@data_dir_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file.")
@click.option("--listen", default="0.0.0.0:8883", show_default=True, help="MQTT over TLS listen address HOST:PORT.")
@click.option("--ws-listen", default=None, help="Optional WebSocket-over-TLS listen address HOST:PORT.")
@click.option("--http-listen", default="0.0.0.0:8443", show_default=True, help="HTTPS enroll/health/metrics address.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Server certificate chain (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="Server private key (PEM).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Logging level.",
)
@clean_errors
def run(
    *,
    data_dir: Path,
    config_path: Path | None,
    listen: str,
    ws_listen: str | None,
    http_listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_level: str,
) -> None:
    """Run the bridge until SIGINT/SIGTERM."""
    from cloud_bridge.service import Bridge  # noqa: PLC0415 - keeps the other commands quick to start

    settings = _settings(
        data_dir,
        config_path=config_path,
        listen=listen,
        ws_listen=ws_listen,
        http_listen=http_listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # amqtt logs every connection at INFO and a traceback on a failed start; ours say it in one line.
    logging.getLogger("amqtt").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("transitions").setLevel(logging.WARNING)
    if log_level != "debug":  # httpx logs every provider request at INFO: one line per intent
        logging.getLogger("httpx").setLevel(logging.WARNING)

    async def serve() -> None:
        bridge = Bridge(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await bridge.start()
            freeze_startup_objects()
            click.echo(f"cloud-bridge listening: mqtts {settings.listen}, https {settings.http_listen}", err=True)
            await stop.wait()
        finally:
            await bridge.stop()

    _run_async(serve())


@main.command("dev-certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, help="Extra host name or IP for the certificate (repeatable).")
@clean_errors
def dev_certs(directory: Path, hosts: tuple[str, ...]) -> None:
    """Write a local CA and a server certificate/key into DIRECTORY (for trying it out)."""
    paths = write_dev_certs(directory, hosts, now=datetime.datetime.now(datetime.UTC))
    click.echo(f"CA certificate (pin this on devices): {paths.ca_cert}")
    click.echo(f"server certificate: {paths.cert}")
    click.echo(f"server key:         {paths.key}")


@main.group()
def devices() -> None:
    """Enroll, list, show and revoke devices."""


@devices.command("enroll-code")
@data_dir_option
@click.option("--tenant", required=True, help="Tenant the device belongs to (names its policy).")
@click.option("--name", required=True, help="Device name; a per-device policy override is keyed by it.")
@click.option("--ttl", default="24h", show_default=True, help="How long the code stays valid (e.g. 30m, 24h, 7d).")
@json_option
@clean_errors
def enroll_code(data_dir: Path, tenant: str, name: str, ttl: str, as_json: bool) -> None:
    """Print a one-time enrollment code for a new device."""
    now = time.time()
    code = _registry(data_dir).create_code(tenant, name, parse_duration(ttl), now)
    expires = format_ms(int((now + parse_duration(ttl)) * 1000))
    if as_json:
        click.echo(json.dumps({"code": code, "tenant": tenant, "name": name, "expires": expires}))
    else:
        click.echo(code)
        click.echo(f"one-time code for {tenant}/{name}, valid until {expires}", err=True)


def _device_json(device: Device) -> dict[str, Any]:
    doc = device.to_json()
    doc["enrolled_at"] = _when(device.enrolled_at)
    doc["revoked_at"] = None if device.revoked_at is None else _when(device.revoked_at)
    return doc


@devices.command("ls")
@data_dir_option
@json_option
@clean_errors
def devices_ls(data_dir: Path, as_json: bool) -> None:
    """List enrolled devices."""
    found = _registry(data_dir).all_devices()
    if as_json:
        click.echo(json.dumps([_device_json(d) for d in found], indent=2))
        return
    click.echo(f"{'DEVICE ID':<28}{'TENANT':<16}{'NAME':<20}{'ENROLLED':<26}STATUS")
    for d in found:
        status = "revoked" if d.revoked else "active"
        click.echo(f"{d.device_id:<28}{d.tenant:<16}{d.name:<20}{_when(d.enrolled_at):<26}{status}")


@devices.command("show")
@click.argument("device_id")
@data_dir_option
@json_option
@clean_errors
def devices_show(device_id: str, data_dir: Path, as_json: bool) -> None:
    """Show one device, with its public key."""
    device = _registry(data_dir).get(device_id)
    if device is None:
        raise click.ClickException(f"no device {device_id!r}")
    doc = _device_json(device)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        click.echo(f"{key}: {value}" if key != "public_key" else f"{key}:\n{value}")


@devices.command("revoke")
@click.argument("device_id")
@data_dir_option
@json_option
@clean_errors
def devices_revoke(device_id: str, data_dir: Path, as_json: bool) -> None:
    """Revoke a device: its live session is dropped and it can never connect again."""
    device = _registry(data_dir).revoke(device_id, time.time())
    if as_json:
        click.echo(json.dumps(_device_json(device)))
    else:
        click.echo(f"revoked {device.device_id} ({device.tenant}/{device.name})")


async def _read_audit(data_dir: Path, device: str | None, since: float | None, limit: int) -> list[Any]:
    ledger = SqliteLedger(data_dir / "ledger.db")
    await ledger.open()
    try:
        return list(await ledger.audit(device_id=device, since=since, limit=limit))
    finally:
        await ledger.close()


@main.command()
@data_dir_option
@click.option("--device", default=None, help="Only this device id.")
@click.option("--since", default=None, help="RFC 3339 time or a duration back from now (e.g. 2h).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="At most this many.")
@json_option
@clean_errors
def audit(data_dir: Path, device: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Print the audit log (oldest first)."""
    since_s = None if since is None else _parse_since(since, time.time())
    records = _run_async(_read_audit(data_dir, device, since_s, limit))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    for r in records:
        doc = r.to_json()
        click.echo(
            f"{doc['at']}  {r.device_id}  {r.intent_id}  {r.kind:<13} {doc['event']:<8} {r.code} {r.detail}".rstrip()
        )


@main.command()
@data_dir_option
@click.option("--since", default="24h", show_default=True, help="Window for event counts (duration or RFC 3339).")
@json_option
@clean_errors
def status(data_dir: Path, since: str, as_json: bool) -> None:
    """Device counts and audit event counts over a recent window."""
    counts = _registry(data_dir).counts()
    records = _run_async(_read_audit(data_dir, None, _parse_since(since, time.time()), 100_000))
    doc = {"devices": counts, "events": count_events(records)}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"devices: {counts.get('active', 0)} active, {counts.get('revoked', 0)} revoked")
    for event, n in sorted(doc["events"].items()):
        click.echo(f"{event:<8} {n}")


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        main()
    sys.exit(0)
