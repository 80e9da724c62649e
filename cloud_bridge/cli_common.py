"""What the `cloud-bridge` commands share: the store and config options, clean one-line errors, settings.

`settings_from` is the one place the environment is read (and handed to `build_settings`).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from cloud_bridge.errors import BridgeError
from cloud_bridge.node_lock import refuse_other_store
from cloud_bridge.settings import BridgeSettings, build_settings
from intent_contract.names import is_name
from intent_contract.readable import readable
from intent_contract.timefmt import parse_duration

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
store_option = click.option(
    "--store",
    envvar="CLOUD_BRIDGE_STORE",
    default=None,
    help="sqlite:///DIR or postgresql://USER@HOST:PORT/DB (env CLOUD_BRIDGE_STORE); overrides [bridge] store;"
    " default: SQLite in --data-dir.",
)
config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML config file."
)


def store_options(fn: Callable[P, R]) -> Callable[P, R]:
    """--data-dir, --store and --config: what every command that reads or writes the store takes."""
    return data_dir_option(store_option(config_option(fn)))


def clean_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our own errors into one-line click errors (exit 1); others are bugs and keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BridgeError as exc:
            raise click.ClickException(exc.detail) from None

    return wrapper


def settings_from(data_dir: Path, **kwargs: Any) -> BridgeSettings:
    return build_settings(data_dir=data_dir, env=dict(os.environ), **kwargs)


def operator_settings(data_dir: Path, **kwargs: Any) -> BridgeSettings:
    """Settings for an operator's command: the config without the providers' keys, which only nodes use (an
    operator's machine with the nodes' config but not their secrets was refused for want of them). ConfigError
    for SQLite files in a data dir whose nodes run on a shared store (`node_lock.refuse_other_store`)."""
    settings = settings_from(data_dir, node_secrets=False, **kwargs)
    if settings.store is None:
        refuse_other_store(data_dir)
    return settings


def check_tenant(settings: BridgeSettings, tenant: str, config_path: Path | None) -> None:
    """Given the nodes' --config, a one-line error when it has no `[tenants.T]` table for the new device's
    `tenant`: a typo made a device whose every intent was rejected `policy_tenant`, for good. Nothing to check
    without one, or with an operator's file that has no tenant at all (only the store's settings)."""
    tables = settings.config.tenants
    if config_path is not None and tables and tenant not in tables:
        raise click.ClickException(
            f"--tenant {readable(tenant)}: {config_path} has no [tenants.{readable(tenant)}] table (it has:"
            f" {', '.join(sorted(tables))}); every intent of the device would be rejected policy_tenant: add the"
            " table first (and reload the nodes)"
        )


def run_async(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def seconds(text: str, flag: str) -> float:
    """A duration flag ('30m', '24h'), or a one-line error naming the flag."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.ClickException(f"{flag}: {exc}") from None


def name_flag(flag: str, name: str | None) -> str | None:
    """A name filter (`--tenant`, `--device`), or a one-line error naming the flag when it is no name: such a
    filter can match nothing, and an empty listing would pass it off as a tenant or device with none."""
    if name is not None and not is_name(name):
        raise click.ClickException(f"{flag}: '{readable(name)}' is not a valid name")
    return name
