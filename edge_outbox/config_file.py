"""The edge's config file: TOML whose keys are `edge-outbox run`'s options; flags and environment win.

    data_dir = "/var/lib/edge-outbox"
    listen = "127.0.0.1:1883"
    max_queue_bytes = "2G"

A key is an option's long name with `_` for `-` (`--max-queue-items` is `max_queue_items`). The
file becomes click's default map, so the order of precedence is: flag, environment variable,
config file, built-in default. `data_dir` applies to every command, and `max_offline` to `status` too
(the health check judges as the outbox's own /healthz does). Every key is checked against
the option it stands for when the file is read, and every bad key is reported at once, with the
file's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from edge_outbox.errors import ConfigError
from edge_outbox.settings import parse_host_port
from edge_outbox.windows import parse_windows
from intent_contract.errors import DecodeError
from intent_contract.sizes import parse_size
from intent_contract.toml_file import read_toml

# Options that a file must not hold: secrets come from the environment or a file of their own.
NOT_IN_FILE = frozenset({"attach_password"})
# Keys that apply to every command with an option of that name, not to `run` only: where the data is, and
# how long without a link is unhealthy (`status` answered with its own default of 1 h while the outbox's
# /healthz used the file's `max_offline`: a site with forward windows failed its health check every day).
SHARED = ("data_dir", "max_offline")
# Values `run` reads only in its body, after click (which stops at the first bad option, and names the flag,
# not the file): checked here too, so that each bad one is named with the others. Until December 2026 a file
# with `retention = "7x"` and `listen = "x"` said only "Invalid value for '--retention'", and the next start
# the next one.
_READ_BY_RUN: dict[str, Callable[[Any], object]] = {
    "listen": lambda text: parse_host_port(text, "--listen"),
    "metrics": lambda text: parse_host_port(text, "--metrics", default_port=9464),
    "max_queue_bytes": parse_size,
    "forward_window": parse_windows,
}
# Earlier names of keys, still read: `users` was `users_file` (the option's name in the code, against the rule
# above) until December 2026, while the example config and docs/deploy.md wrote `users`, which stopped the outbox.
RENAMED = {"users_file": "users"}
# Where click's context keeps (path, document) of the file as read at start: `run` hands it to the reload.
STARTED_WITH = "edge_outbox.config_file"
# A value not echoed in an error: an attach URL may hold a user's password (refused, but not to be shown).
_NOT_SHOWN = frozenset({"attach"})


def _wrong_type(param: click.Option, value: object) -> str | None:
    """Why a TOML value cannot stand for `param` where its converter would not say (a number for a path
    was taken as a file descriptor; a number for a flag failed in click; a fraction or a boolean for a count
    was cut to an integer)."""
    if param.is_flag:
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(param.type, click.Path) and not isinstance(value, str):
        return "must be a string (a path)"
    if isinstance(param.type, click.types.IntParamType) and (type(value) is not int):
        # click takes int(value): 0.5 was 0, which `max_queue_items` takes for "no limit", and true was 1.
        return "must be a whole number"
    if param.multiple:
        return None if isinstance(value, list) else "must be a list"
    if isinstance(value, list | dict):
        return "must be a single value"
    return None


def load(path: Path, group: click.Group, ctx: click.Context) -> dict[str, dict[str, Any]]:
    """click's default map for every command of `group`, from the config file at `path`."""
    try:
        document = read_toml(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except DecodeError as exc:
        raise ConfigError(f"{path} {exc}") from None
    ctx.meta[STARTED_WITH] = (path, dict(document))  # for a reload to say whether the file changed since
    run = group.commands["run"]
    params = {p.name: p for p in run.params if isinstance(p, click.Option) and p.name not in NOT_IN_FILE}
    errors: list[str] = []
    for old, new in RENAMED.items():
        if old in document and new in document:
            errors.append(f"{old}: the earlier name of {new}; give only {new}")
            document.pop(old)
        elif old in document:
            document[new] = document.pop(old)
    for key, value in document.items():
        param = params.get(key)
        if param is None:
            errors.append(f"{key}: not an option of `edge-outbox run` (known: {', '.join(sorted(params))})")
            continue
        shown = key if key in _NOT_SHOWN else f"{key} = {value!r}"
        problem = _wrong_type(param, value)
        if problem is not None:
            errors.append(f"{shown}: {problem}")
            continue
        try:
            param.process_value(ctx, value)  # its type, and its callback (a duration's)
            if (check := _READ_BY_RUN.get(key)) is not None:
                check(value)
        except click.BadParameter as exc:
            errors.append(f"{shown}: {exc.message}")
        except (ConfigError, ValueError) as exc:
            errors.append(f"{shown}: {exc}")
        except (TypeError, AttributeError, OverflowError):
            # A converter that met a TOML type it never sees from a flag.
            errors.append(f"{shown}: not a value of --{key.replace('_', '-')}")
    if errors:
        raise ConfigError(f"{path}: " + "; ".join(errors))
    defaults: dict[str, dict[str, Any]] = {"run": dict(document)}
    for name, command in group.commands.items():
        shared = {p.name: document[p.name] for p in command.params if p.name in SHARED and p.name in document}
        if name != "run" and shared:
            defaults[name] = shared
    return defaults


def changed_since(path: Path, started: Mapping[str, Any]) -> str | None:
    """What a reload (SIGHUP) says of the config file the outbox started with: None when it holds the same, else
    that its keys take a restart, naming the keys that changed (never a value: an attach URL names a user).
    Before, a reload said only "reloaded device.json and ca.pem", and an edited file seemed applied."""
    keep = "the outbox goes on with those it started with"
    try:
        now = read_toml(path)
    except OSError as exc:
        return f"config file {path} cannot be read now ({exc.strerror}): {keep}; fix it before the next start"
    except DecodeError as exc:
        return f"config file {path} {exc}: {keep}; fix it before the next start"
    missing = object()
    changed = sorted(key for key in started.keys() | now.keys() if started.get(key, missing) != now.get(key, missing))
    if not changed:
        return None
    return (
        f"config file {path} changed since the outbox started ({', '.join(changed)}): run's options take a restart"
        f" (systemctl restart edge-outbox); {keep}"
    )
