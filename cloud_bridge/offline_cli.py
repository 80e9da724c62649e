"""The bridge's commands for sites that are never online: `import`, `receipt`, `offline-keys`.

They work beside a running `cloud-bridge run` on the same data dir (SQLite's locking makes that
safe): imported intents are queued in the ledger, where the running bridge's executor finds them
within a second, and their results wait there, unconfirmed, for the next receipt.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cloud_bridge.cli_common import check_tenant, operator_settings
from cloud_bridge.errors import BridgeError, ConfigError, OfflineFileError
from cloud_bridge.offline_enroll import answer, ticket
from cloud_bridge.offline_import import Imported, OfflineDesk
from cloud_bridge.offline_keys import load_for_store, load_or_create
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Registry
from cloud_bridge.settings import BridgeSettings
from cloud_bridge.store import for_operators, open_store
from intent_contract.bridge_url import bridge_url_host
from intent_contract.cli_args import FileToWrite
from intent_contract.errors import DecodeError
from intent_contract.files import read_bounded, write_atomic
from intent_contract.ids import IdGenerator
from intent_contract.offline_wire import DEFAULT_FILE_BYTES, ENROLL_FILE_BYTES, MAX_BUNDLE_INTENTS, file_limit
from intent_contract.progress import progress_line
from intent_contract.timefmt import format_ms, parse_duration

Decorator = Callable[[Any], Any]


def _fail(exc: BridgeError) -> click.ClickException:
    return click.ClickException(exc.detail)


def write_file(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    try:
        write_atomic(path, data, mode=mode)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_file(path: Path, max_bytes: int) -> bytes:
    try:
        return read_bounded(path, max_bytes)
    except DecodeError as exc:
        raise OfflineFileError(f"{exc} (--max-bytes)", code="too_large") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _max_bytes(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return file_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class _Offline:
    """The store (registry, ledger, limits), admission and keys, for the length of one command."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.store = open_store(
            settings.store_url,
            node="cli-import",
            tokens_per_device=settings.tokens_per_device,
            timeout=settings.store_timeout,
        )

    async def __aenter__(self) -> OfflineDesk:
        from cloud_bridge.service import BridgeService  # noqa: PLC0415 - keeps the other commands quick to start

        # The device must be enrolled in it: a mistyped store is said so, not made (with new offline keys).
        for_operators(self.store)
        await self.store.open(migrate=False)
        keys = await own_thread(load_for_store, self.settings.data_dir, self.store.registry.offline_key_id)
        policy = self.settings.config.policy()
        store = self.store
        service = BridgeService(
            ledger=store.ledger, policy=policy, registry=store.registry, max_intent_age=self.settings.max_intent_age
        )
        new_id = IdGenerator(lambda: int(time.time() * 1000), secrets.token_bytes).new
        tenants = set(self.settings.config.tenants)
        return OfflineDesk(keys, store.registry, store.ledger, service, new_id=new_id, tenants=tenants)

    async def __aexit__(self, *_: object) -> None:
        await self.store.close()


def _opened_registry(settings: BridgeSettings) -> Registry:
    """The store's registry (made if need be, its schema at this code's version: `for_operators`) and open; the
    process exit releases it."""
    store = open_store(settings.store_url, node="cli", timeout=settings.store_timeout)
    for_operators(store, make=True)
    store.registry.open()
    return store.registry


def _summary(imported: Imported, receipt: Path, final: int) -> dict[str, Any]:
    return {
        "device_id": imported.device.device_id,
        "bundle": imported.bundle.id,
        "intents": len(imported.acks),
        "states": imported.states,
        "final_results_in_receipt": final,
        "revoked": imported.device.revoked,
        "receipt": str(receipt),
        "bridge_time": format_ms(imported.imported_at),
        "key_rotation_accepted": imported.next_key is not None,
        "key_rotation_refused": imported.rotation_refused,
        "left_out": imported.left_out,
    }


@click.command("import")
@click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The bridge's TOML config (the one `run` uses): its policy decides what is admitted.",
)
@click.option(
    "--receipt",
    "receipt_path",
    type=FileToWrite(),
    required=True,
    help="Where to write the signed receipt to carry back to the device.",
)
@click.option(
    "--max-bytes",
    default=f"{DEFAULT_FILE_BYTES >> 20}M",
    show_default=True,
    callback=_max_bytes,
    help="Refuse a bundle file larger than this.",
)
@click.option(
    "--wait",
    default="0s",
    show_default=True,
    help="Wait up to this long (e.g. 2m) for the running bridge to execute the intents, so the receipt has results.",
)
def import_bundle(
    bundle_file: Path,
    data_dir: Path,
    store: str | None,
    config_path: Path,
    receipt_path: Path,
    max_bytes: int,
    wait: str,
    as_json: bool,
) -> None:
    """Import a device's bundle (from `edge-outbox export`) and write its receipt.

    Exits 1 when the bundle is refused (unreadable, forged, unknown device, too large, a tenant the config has
    no table for); for a revoked device nothing is admitted, and the receipt that tells the device so is
    written before it exits 1.
    """
    try:
        wait_s = parse_duration(wait)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from None
    try:
        settings = operator_settings(data_dir, config_path=config_path, store=store)
        data = read_file(bundle_file, max_bytes)
        imported, final, receipt_data = asyncio.run(_import(settings, data, max_bytes, wait_s))
    except BridgeError as exc:
        raise _fail(exc) from None
    summary = _summary(imported, receipt_path, final)
    states = ", ".join(f"{n} {state}" for state, n in sorted(summary["states"].items())) or "none"
    told = f"bundle {summary['bundle']} of device {summary['device_id']}: {summary['intents']} intents ({states})"
    try:
        write_file(receipt_path, receipt_data)
    except BridgeError as exc:
        # What the store holds stands; only the receipt is missing, and it can be written again at any time.
        raise click.ClickException(
            f"{told}; {exc.detail}: import the bundle again with a --receipt that can be written (nothing in it"
            " runs twice)"
        ) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{told}; receipt with {final} final results written to {receipt_path}")
        if imported.next_key is not None:
            click.echo("key rotation accepted: the device switches to its new key when it applies the receipt")
        if imported.rotation_refused is not None:
            click.echo(
                f"key rotation refused ({imported.rotation_refused}): the receipt tells the device, which keeps its"
                " current key"
            )
        if imported.left_out:
            click.echo(
                f"{imported.left_out} more intents in the bundle, over the {MAX_BUNDLE_INTENTS:,} a bundle may carry"
                " (made by an edge-outbox before 4 Dec 2026), were not admitted: the receipt names none of them, and"
                " the device sends them again in its next bundle"
            )
    if imported.device.revoked:
        raise click.ClickException(
            f"device {imported.device.device_id} is revoked: nothing admitted; the receipt tells the device so"
        )


async def _import(settings: BridgeSettings, data: bytes, max_bytes: int, wait_s: float) -> tuple[Imported, int, bytes]:
    """The bundle admitted (its results awaited up to `wait_s`): what was imported, the number of final
    results in its receipt, and the receipt."""
    async with _Offline(settings) as desk:
        with progress_line("admitted") as admitted:
            imported = await desk.import_bundle(data, max_bytes=max_bytes, progress=admitted)
        device_id = imported.device.device_id
        later = []
        if wait_s > 0 and not imported.device.revoked:
            queued = {a.id for a in imported.acks if not a.state.final}
            with progress_line("results") as results:
                later = await desk.wait_final(device_id, queued, wait_s, results)
        receipt, final = await desk.receipt(device_id, imported, later)
    return imported, final, receipt


@click.command("receipt")
@click.argument("device_id")
@click.option("--out", "out_path", type=FileToWrite(), required=True, help="Receipt file to write.")
def receipt(
    device_id: str, data_dir: Path, store: str | None, config_path: Path | None, out_path: Path, as_json: bool
) -> None:
    """Write a receipt for a device without a bundle: its results so far, its revocation, the bridge's time."""
    try:
        settings = operator_settings(data_dir, store=store, config_path=config_path)
        asyncio.run(_receipt(settings, device_id, out_path))
    except BridgeError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps({"device_id": device_id, "receipt": str(out_path)}))
    else:
        click.echo(f"receipt for device {device_id} written to {out_path}")


async def _receipt(settings: BridgeSettings, device_id: str, out_path: Path) -> None:
    async with _Offline(settings) as desk:
        data, _final = await desk.receipt(device_id)
    await own_thread(write_file, out_path, data)


@click.command("offline-keys")
def offline_keys(data_dir: Path, as_json: bool) -> None:
    """Show the bridge's offline public keys (made on first use): devices pin them at enrollment."""
    try:
        keys = load_or_create(data_dir)
    except BridgeError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(keys.public.to_json(), indent=2))
    else:
        click.echo(f"key id:    {keys.public.key_id}")
        click.echo(f"recipient: {keys.public.recipient}")
        click.echo(f"signing key:\n{keys.public.signing_key}")


@click.command("enroll-ticket")
@click.option("--tenant", required=True, help="Tenant the device belongs to (names its policy).")
@click.option("--name", required=True, help="Device name; a per-device policy override is keyed by it.")
@click.option("--ttl", default="7d", show_default=True, help="How long the code stays valid (e.g. 24h, 30d).")
@click.option("--out", "out_path", type=FileToWrite(), required=True, help="Ticket file.")
@click.option(
    "--bridge-url",
    default="",
    help="The bridge's https:// enrollment address, for a device that may go online one day.",
)
@click.option(
    "--ca", "ca_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="CA the device pins for that."
)
def enroll_ticket(
    data_dir: Path,
    store: str | None,
    config_path: Path | None,
    tenant: str,
    name: str,
    ttl: str,
    out_path: Path,
    bridge_url: str,
    ca_path: Path | None,
    as_json: bool,
) -> None:
    """Write an enrollment ticket for a site that never connects: a one-time code and the keys to pin.

    On the site: `edge-outbox enroll-request --ticket FILE`. Keep the ticket as secret as a code.
    """
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    try:
        if bridge_url:  # the site's enroll-import would fail on it after the code is spent
            bridge_url_host(bridge_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bridge-url") from None
    try:
        settings = operator_settings(data_dir, store=store, config_path=config_path)
        check_tenant(settings, tenant, config_path)
        registry = _opened_registry(settings)
        keys = load_for_store(data_dir, registry.offline_key_id)
        now = time.time()
        code = registry.create_code(tenant, name, seconds, now)
        ca_pem = ca_path.read_text() if ca_path is not None else ""
        expires = format_ms(int((now + seconds) * 1000))
        # 0600: the ticket holds the one-time code in clear (a code lets whoever has it enroll a device)
        write_file(out_path, ticket(keys, code, tenant, name, expires, bridge_url, ca_pem).encode(), mode=0o600)
    except BridgeError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise click.ClickException(f"--ca {ca_path}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({"ticket": str(out_path), "tenant": tenant, "name": name, "expires": expires}))
    else:
        click.echo(f"ticket for {tenant}/{name}, valid until {expires}, written to {out_path}")


@click.command("enroll-offline")
@click.argument("request_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_path", type=FileToWrite(), required=True, help="Response file.")
def enroll_offline(
    data_dir: Path, store: str | None, config_path: Path | None, request_file: Path, out_path: Path, as_json: bool
) -> None:
    """Answer a device's offline enrollment request (from `edge-outbox enroll-request`) with a signed response."""
    try:
        settings = operator_settings(data_dir, store=store, config_path=config_path)
        registry = _opened_registry(settings)
        data = read_file(request_file, ENROLL_FILE_BYTES)
        device, response = answer(
            load_for_store(data_dir, registry.offline_key_id),
            registry,
            data,
            audience=settings.audience,
            now=time.time,
        )
        write_file(out_path, response)
    except BridgeError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps({"device_id": device.device_id, "response": str(out_path)}))
    else:
        click.echo(
            f"enrolled device {device.device_id} ({device.tenant}/{device.name}); response written to {out_path}"
        )


def register(
    group: click.Group,
    data_dir_option: Decorator,
    store_option: Decorator,
    json_option: Decorator,
    store_options: Decorator,
) -> None:
    """Add these commands to the bridge's CLI, with its own --data-dir, --store (and --config) and --json options.

    `import` has a --config of its own (required: its policy); the others take the optional one of every command
    on the store (the store and its password, the audience), which they lacked: on a PostgreSQL store whose
    password the config names they could not open it."""
    group.add_command(json_option(data_dir_option(offline_keys)))
    group.add_command(json_option(data_dir_option(store_option(import_bundle))))
    group.add_command(json_option(store_options(receipt)))
    devices = group.commands["devices"]
    assert isinstance(devices, click.Group)
    for command in (enroll_ticket, enroll_offline):
        devices.add_command(json_option(store_options(command)))
