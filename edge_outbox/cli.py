"""The `edge-outbox` command: run the outbox, and inspect or steer its queue (also while it runs)."""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from edge_outbox import cli_offline, cli_queue, config_file, lock
from edge_outbox.apps_auth import hash_password, load_users
from edge_outbox.cli_format import print_json
from edge_outbox.cli_options import data_dir_option, duration_seconds, json_option, max_offline_option
from edge_outbox.enroll_client import enroll as enroll_device
from edge_outbox.errors import OutboxError
from edge_outbox.settings import AttachTarget, ForwarderSettings, OutboxSettings, parse_host_port
from edge_outbox.windows import parse_windows
from intent_contract.cli_args import TextArgsGroup
from intent_contract.logs import LogFormat
from intent_contract.logs import configure as configure_logging
from intent_contract.names import NAME_PATTERN, is_name
from intent_contract.readable import readable
from intent_contract.sizes import parse_size


class _Group(TextArgsGroup):
    """Turns our own errors into one clean line and a non-zero exit; anything else is a bug: its traceback shows."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OutboxError as exc:
            # Written out: a message may quote a file or a device (a receipt's key id with an ESC or a newline)
            raise click.ClickException(readable(str(exc))) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-queue-bytes") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-outbox")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGE_OUTBOX_CONFIG",
    show_envvar=True,
    help="TOML file of `run` options (e.g. /etc/edge-outbox/config.toml); flags and environment win.",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Edge outbox: durable local intake of intents, forwarded to the cloud bridge when a link exists."""
    if config is not None:
        ctx.default_map = config_file.load(config, main, ctx)


def _env_only(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A secret option taken from its environment variable, refused on the command line (the value is not shown)."""
    if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(
            f"{param.opts[0]}: a password on the command line shows in process listings (ps) and the shell's"
            f" history; put it in {param.envvar} (systemd: EnvironmentFile=, mode 0600)"
        )
    return value


@main.command()
@data_dir_option
@click.option(
    "--listen",
    default="127.0.0.1:1883",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the embedded MQTT broker listens for local apps.",
)
@click.option(
    "--attach",
    metavar="mqtt[s]://HOST:PORT",
    help="Use an existing broker instead of the embedded one; mqtts:// is TLS. Password: EDGE_OUTBOX_ATTACH_PASSWORD.",
)
@click.option(
    "--attach-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="CA certificates (PEM) that sign an mqtts:// attach broker's certificate (default: the system's).",
)
@click.option(
    "--attach-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Client certificate (PEM, its chain after it) for an mqtts:// broker that asks for one (Mosquitto: "
    "require_certificate).",
)
@click.option(
    "--attach-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The --attach-cert certificate's private key (PEM, not encrypted; default: in the --attach-cert file).",
)
@click.option(
    "--attach-client-id",
    default="edge-outbox",
    show_default=True,
    help="Client id of the persistent session on the attached broker.",
)
# Read from the environment only (never a file: config_file.NOT_IN_FILE): on the command line it shows in `ps`.
@click.option("--attach-password", envvar="EDGE_OUTBOX_ATTACH_PASSWORD", hidden=True, callback=_env_only)
@click.option(
    "--users",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="EDGE_OUTBOX_USERS",
    help="File of `app:hash` lines; when given, apps must log in.",
)
@click.option(
    "--max-queue-items",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Refuse new intents while this many wait (0: no limit).",
)
@click.option(
    "--max-queue-bytes",
    default="1G",
    show_default=True,
    help="Refuse new intents while this many payload bytes wait, e.g. 500M (0: no limit).",
)
@click.option(
    "--retention",
    default="7d",
    show_default=True,
    callback=duration_seconds,
    help="Purge intents this long after they reached a final state.",
)
@click.option(
    "--session-expiry",
    default="7d",
    show_default=True,
    callback=duration_seconds,
    help="Drop an app's persistent MQTT session (and the statuses kept for it) when its client is away this long.",
)
@click.option(
    "--status-history",
    default="24h",
    show_default=True,
    callback=duration_seconds,
    help="Keep statuses this long from when they happened (and until every persistent session has them), for"
    " replay requests.",
)
@click.option("--no-forward", is_flag=True, help="Only take in and keep intents; do not forward them.")
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    envvar="EDGE_OUTBOX_METRICS",
    help="Serve GET /metrics (Prometheus) and GET /healthz on this loopback address (off by default).",
)
@max_offline_option
@click.option(
    "--bridge-websocket",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Reach the bridge by MQTT over WebSocket over TLS on this port (for sites that only allow HTTPS out).",
)
@click.option(
    "--forward-window",
    multiple=True,
    metavar="HH:MM-HH:MM",
    help="Connect to the bridge only within this daily span of local time (repeatable; default: always);"
    " `edge-outbox flush` connects outside it.",
)
@click.option(
    "--health-interval",
    default="60s",
    show_default=True,
    callback=duration_seconds,
    help="Send the bridge a health report this often while connected, and on every connect (0: on connect only).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="EDGE_OUTBOX_LOG_FORMAT",
    help="Log lines as text, or as one JSON object each (for log shippers).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much to log (to stderr).",
)
def run(
    data_dir: Path,
    listen: str,
    attach: str | None,
    attach_client_id: str,
    attach_ca: Path | None,
    attach_cert: Path | None,
    attach_key: Path | None,
    attach_password: str | None,
    users: Path | None,
    max_queue_items: int,
    max_queue_bytes: str,
    retention: float,
    session_expiry: float,
    status_history: float,
    no_forward: bool,
    metrics: str | None,
    max_offline: float,
    bridge_websocket: int | None,
    forward_window: tuple[str, ...],
    health_interval: float,
    log_format: LogFormat,
    log_level: str,
) -> None:
    """Run the outbox: take intents from local apps, store them durably, forward them, publish their status."""
    from edge_outbox.process import serve  # noqa: PLC0415 - keeps the ops commands quick to start

    host, port = parse_host_port(listen, "--listen")
    windows = parse_windows(forward_window)
    settings = OutboxSettings(
        data_dir=data_dir,
        listen_host=host,
        listen_port=port,
        attach=AttachTarget.parse(attach, attach_password, attach_client_id, attach_ca, (attach_cert, attach_key))
        if attach
        else None,
        users=load_users(users) if users else None,
        users_file=users,
        max_queue_items=max_queue_items,
        max_queue_bytes=_size(max_queue_bytes),
        retention_s=retention,
        session_expiry_s=session_expiry,
        status_history_s=status_history,
        forward=not no_forward,
        metrics=parse_host_port(metrics, "--metrics", default_port=9464) if metrics else None,
        max_offline_s=max_offline,
        forwarder=ForwarderSettings(
            transport="websockets", websocket_port=bridge_websocket, windows=windows, health_interval_s=health_interval
        )
        if bridge_websocket
        else ForwarderSettings(windows=windows, health_interval_s=health_interval),
    )
    configure_logging(log_level, log_format)
    started = click.get_current_context().meta.get(config_file.STARTED_WITH)
    changed = None if started is None else functools.partial(config_file.changed_since, *started)
    # NOTIFY_SOCKET: systemd's, for Type=notify
    asyncio.run(serve(settings, notify_socket=os.environ.get("NOTIFY_SOCKET"), config_changed=changed))


def _app_name(_ctx: click.Context, _param: click.Parameter, app: str) -> str:
    """An app name a users file can hold (`load_users`): one it refused was printed, and `run` stopped on its line."""
    if not is_name(app):
        raise click.BadParameter(f"app name {app[:80]!r} must match {NAME_PATTERN[1:-1]}: an app logs in by it")
    return app


def _not_empty(_ctx: click.Context, _param: click.Parameter, password: str) -> str:
    """An empty password (`--password "$VAR"` with VAR unset) let any client in that knew the app's name."""
    if not password:
        raise click.BadParameter("the password is empty: give the app's password (or leave --password out to be asked)")
    return password


@main.command(name="hash-password")
@click.option("--app", required=True, callback=_app_name, help="The app name the login is for.")
@click.password_option(callback=_not_empty, help="The password (prompted twice when not given; never echoed).")
def hash_password_cmd(app: str, password: str) -> None:
    """Print a users-file line `app:hash` for `edge-outbox run --users FILE`."""
    click.echo(f"{app}:{hash_password(password)}")


@main.command()
@data_dir_option
@click.option(
    "--bridge",
    "bridge_url",
    required=True,
    metavar="URL",
    help="The bridge's enrollment address, e.g. https://bridge.example.com:8443.",
)
@click.option("--code", required=True, help="The one-time code from `cloud-bridge devices enroll-code`.")
@click.option(
    "--ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="CA certificate that signed the bridge's certificate; it is pinned for every connection.",
)
@json_option
def enroll(data_dir: Path, bridge_url: str, code: str, ca: Path, as_json: bool) -> None:
    """Make this device's key and register it with the bridge (once per device)."""
    in_doubt = cli_offline.intents_in_doubt(data_dir)
    identity = enroll_device(data_dir, bridge_url, code, ca)
    if as_json:
        print_json({**asdict(identity), "identity_changed": in_doubt})
    else:
        cli_offline.say_identity_changed(in_doubt)
        running = lock.running(data_dir)
        next_step = (
            f"restart the running `edge-outbox run` (pid {running.get('pid', '?')}) to start forwarding"
            if running is not None
            else "start `edge-outbox run` to begin forwarding"
        )
        click.echo(
            f"enrolled as device {identity.device_id} (tenant {identity.tenant}, name {identity.name}); {next_step}"
        )


cli_offline.register(main)
for _command in cli_queue.COMMANDS:
    main.add_command(_command)
