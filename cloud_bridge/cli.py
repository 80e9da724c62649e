"""`cloud-bridge`: enroll and revoke devices, read the audit log, upgrade the store (`run`, `reload`: cli_run).

The CLI only parses, builds BridgeSettings (`cli_common.settings_from`, the one place that reads the
environment) and hands it down. Our own errors (BridgeError) become one-line messages with a
non-zero exit; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from cloud_bridge import cli_run, fleet_cli, intents_cli, offline_cli, usage_cli
from cloud_bridge.audit import AuditQuery
from cloud_bridge.certs import parse_owner, write_dev_certs
from cloud_bridge.cli_common import (
    check_tenant,
    clean_errors,
    data_dir_option,
    json_option,
    name_flag,
    operator_settings,
    run_async,
    seconds,
    store_option,
    store_options,
)
from cloud_bridge.health_probe import check as check_health
from cloud_bridge.registry import Device, Registry
from cloud_bridge.store import Store, for_operators, open_store
from intent_contract.cli_args import DirectoryToWrite, TextArgsGroup
from intent_contract.names import is_name
from intent_contract.passwords import hash_password
from intent_contract.timefmt import format_ms, parse_duration, parse_rfc3339_ms


def _store(data_dir: Path, store: str | None, config_path: Path | None) -> Store:
    settings = operator_settings(data_dir, config_path=config_path, store=store, node_id="cli")
    return open_store(settings.store_url, node=settings.node_id, timeout=settings.store_timeout)


def _registry(data_dir: Path, store: str | None, config_path: Path | None, *, make: bool = True) -> Registry:
    """The store's registry, open (its schema at this code's version: `for_operators`); the process exit releases
    it. Unless `make`, NoStoreError when the store was never made (a mistyped --data-dir or --store)."""
    opened = _store(data_dir, store, config_path)
    for_operators(opened, make=make)
    opened.registry.open()
    return opened.registry


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else format_ms(int(seconds * 1000))


def _parse_since(text: str, now: float) -> float:
    """RFC 3339 or a duration back from now ('2h')."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_rfc3339_ms(text) / 1000
    except ValueError as exc:
        raise click.ClickException(f"--since: {exc}, nor a duration such as 2h") from None


@click.group(cls=TextArgsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-outbox")  # one distribution ships both programs
def main() -> None:
    """Cloud bridge: the only place provider keys live; devices submit intents over MQTT/TLS."""


@main.command("dev-certs")
@click.argument("directory", type=DirectoryToWrite())
@click.option("--host", "hosts", multiple=True, help="Extra host name or IP for the certificate (repeatable).")
@click.option(
    "--owner",
    metavar="UID[:GID]",
    help="Give the files to this user (the container image's is 10001), so a bridge running as it can read the key.",
)
@clean_errors
def dev_certs(directory: Path, hosts: tuple[str, ...], owner: str | None) -> None:
    """Write a local CA and a server certificate/key into DIRECTORY (for trying it out)."""
    paths = write_dev_certs(
        directory, hosts, now=datetime.datetime.now(datetime.UTC), owner=parse_owner(owner) if owner else None
    )
    click.echo(f"CA certificate (pin this on devices): {paths.ca_cert}")
    click.echo(f"server certificate: {paths.cert}")
    click.echo(f"server key:         {paths.key}")


@main.command()
@click.option(
    "--url", default="https://localhost:8443/healthz", show_default=True, help="The bridge's /healthz address."
)
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA that signed the bridge's certificate (default: the system's CAs).",
)
@click.option("--server-name", help="Check the certificate against this name instead of the URL's host.")
@clean_errors
def health(url: str, ca: Path | None, server_name: str | None) -> None:
    """Exit 0 when the bridge answers GET /healthz over verified TLS, 1 otherwise (for health checks)."""
    check_health(url, ca=ca, server_name=server_name)
    click.echo(f"ok: {url}")


@main.group()
def devices() -> None:
    """Enroll, list, show, diagnose and revoke devices."""


@devices.command("enroll-code")
@store_options
@click.option("--tenant", required=True, help="Tenant the device belongs to (names its policy).")
@click.option("--name", required=True, help="Device name; a per-device policy override is keyed by it.")
@click.option("--ttl", default="24h", show_default=True, help="How long the code stays valid (e.g. 30m, 24h, 7d).")
@json_option
@clean_errors
def enroll_code(
    data_dir: Path, store: str | None, config_path: Path | None, tenant: str, name: str, ttl: str, as_json: bool
) -> None:
    """Print a one-time enrollment code for a new device."""
    now = time.time()
    valid = seconds(ttl, "--ttl")
    check_tenant(operator_settings(data_dir, config_path=config_path, store=store), tenant, config_path)
    code = _registry(data_dir, store, config_path).create_code(tenant, name, valid, now)
    expires = format_ms(int((now + valid) * 1000))
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


@devices.command("revoke")
@click.argument("device_id")
@store_options
@json_option
@clean_errors
def devices_revoke(device_id: str, data_dir: Path, store: str | None, config_path: Path | None, as_json: bool) -> None:
    """Revoke a device: its live session is dropped (on every node) and it can never connect again."""
    # A store never made is said so: revoke made an empty one there and answered "no device", and the operator
    # revoking a stolen device doubted its id, not the --data-dir or --store.
    device = _registry(data_dir, store, config_path, make=False).revoke(device_id, time.time())
    if as_json:
        click.echo(json.dumps(_device_json(device)))
    else:
        click.echo(f"revoked {device.device_id} ({device.tenant}/{device.name})")


async def _read_audit(
    opened: Store, device: str | None, since: float | None, limit: int, tenant: str | None = None
) -> list[Any]:
    for_operators(opened)  # `audit` reads: a mistyped store is said so, not made and read empty
    await opened.open(migrate=False)
    try:
        return list(await opened.ledger.audit(device_id=device, since=since, limit=limit, tenant=tenant))
    finally:
        await opened.close()


@main.command()
@store_options
@click.option("--device", default=None, help="Only this device id.")
@click.option("--tenant", default=None, help="Only this tenant's devices.")
@click.option("--since", default=None, help="RFC 3339 time or a duration back from now (e.g. 2h).")
@click.option(
    "--limit", default=1000, show_default=True, type=click.IntRange(1, AuditQuery.MAX_LIMIT),
    help="At most this many, the oldest first (a line on stderr says when more match).",
)  # fmt: skip
@json_option
@clean_errors
def audit(
    data_dir: Path,
    store: str | None,
    config_path: Path | None,
    device: str | None,
    tenant: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Print the audit log (oldest first): admissions, results, and every refusal (policy, limits, schema,
    expired on arrival, refused connects)."""
    name_flag("--device", device)
    name_flag("--tenant", tenant)
    since_s = None if since is None else _parse_since(since, time.time())
    # One more than shown, to say when the limit cut the window: oldest first, what it cuts is the newest.
    asked = min(limit + 1, AuditQuery.MAX_LIMIT)
    records = run_async(_read_audit(_store(data_dir, store, config_path), device, since_s, asked, tenant))
    if len(records) > limit or len(records) == AuditQuery.MAX_LIMIT:
        records = records[:limit]
        click.echo(f"only the oldest {limit} records are shown; more match (raise --limit, or a later --since)",
                   err=True)  # fmt: skip
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    for r in records:
        doc = r.to_json()
        click.echo(
            f"{doc['at']}  {r.tenant}  {r.device_id}  {r.intent_id or '-'}  {r.kind or '-':<13} {doc['event']:<8}"
            f" {r.code} {r.detail}".rstrip()
        )


@main.command()
@store_options
@click.option("--since", default="24h", show_default=True, help="Window for event counts (duration or RFC 3339).")
@json_option
@clean_errors
def status(data_dir: Path, store: str | None, config_path: Path | None, since: str, as_json: bool) -> None:
    """Device counts and audit event counts over a recent window."""
    since_s = _parse_since(since, time.time())
    opened = _store(data_dir, store, config_path)
    for_operators(opened)
    opened.registry.open()  # the PostgreSQL registry owns the sync pool the intents share
    try:
        opened.intents.open()
        counts, events = opened.registry.counts(), opened.intents.audit_counts(since_s)
    finally:
        opened.registry.close()
    doc = {"devices": counts, "events": events}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"devices: {counts.get('active', 0)} active, {counts.get('revoked', 0)} revoked")
    for event, n in sorted(doc["events"].items()):
        click.echo(f"{event:<8} {n}")


@main.group()
def db() -> None:
    """The store's schema."""


@db.command("upgrade")
@store_options
@click.option(
    "--force", is_flag=True, help="Apply a step that is not safe while nodes run even though some run on the store."
)
@json_option
@clean_errors
def db_upgrade(data_dir: Path, store: str | None, config_path: Path | None, force: bool, as_json: bool) -> None:
    """Apply every pending schema migration, including those not safe while other nodes run (stop them first)."""
    opened = _store(data_dir, store, config_path)
    applied = opened.upgrade(force)
    opened.registry.open()
    opened.registry.close()
    if as_json:
        click.echo(json.dumps({"store": str(opened.url), "applied": applied}))
    elif applied:
        click.echo(f"{opened.url}: applied schema steps {', '.join(map(str, applied))}")
    else:
        click.echo(f"{opened.url}: schema is up to date")


main.add_command(cli_run.run)
main.add_command(cli_run.reload)
offline_cli.register(main, data_dir_option, store_option, json_option, store_options)
fleet_cli.register(devices, store_options, json_option)  # devices ls, show, diagnose
usage_cli.register(main, store_options, json_option)
intents_cli.register(main, store_options, json_option)  # intents ls, show, retry, cancel, purge


@main.group()
def dashboard() -> None:
    """The operators' web dashboard (docs/dashboard.md)."""


@dashboard.command("hash-password")
@click.option("--operator", required=True, help="The operator's login name.")
@click.password_option(help="The password (prompted twice when not given; never echoed).")
def dashboard_hash_password(operator: str, password: str) -> None:
    """Print a `[dashboard.operators]` line for the bridge's config: `name = "scrypt$..."`."""
    if not is_name(operator):
        raise click.BadParameter("must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", param_hint="--operator")
    click.echo(f'{operator} = "{hash_password(password)}"')


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        main()
    sys.exit(0)
