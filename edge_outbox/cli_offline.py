"""The ops commands for sites that are never online or only now and then (docs/offline-sites.md):
export, import-receipt, flush, enroll-request, enroll-import, rotate-key. Registered on the
`edge-outbox` group by edge_outbox.cli, with the shared --data-dir and --json options (cli_options)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_outbox.cli_db import connection
from edge_outbox.cli_format import counted, now_ms, print_json
from edge_outbox.cli_options import data_dir_option, json_option
from edge_outbox.db import db_path
from edge_outbox.identity import load_identity
from intent_contract.cli_args import FileToWrite
from intent_contract.errors import DecodeError
from intent_contract.files import read_bounded
from intent_contract.ids import IdGenerator
from intent_contract.offline_wire import DEFAULT_FILE_BYTES, ENROLL_FILE_BYTES, MAX_BUNDLE_INTENTS, file_limit
from intent_contract.progress import progress_line
from intent_contract.timefmt import format_age, format_ms, parse_duration

F = TypeVar("F", bound=Callable[..., Any])


def _bundle_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return file_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _read(path: Path, max_bytes: int, hint: str = "") -> bytes:
    """A file from the stick, judged by its size before it is read; a one-line error otherwise."""
    try:
        return read_bounded(path, max_bytes)
    except DecodeError as exc:
        raise click.ClickException(f"{exc}{hint}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


def bundle_size_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--max-bytes",
        default=f"{DEFAULT_FILE_BYTES >> 20}M",
        show_default=True,
        callback=_bundle_size,
        help=f"Largest {what} file, e.g. 64M (the bridge refuses bundles over its own --max-bytes).",
    )


@click.command(name="export")
@click.option("--out", required=True, type=FileToWrite(), help="The bundle file to write.")
@bundle_size_option("bundle")
def export_cmd(data_dir: Path, out: Path, max_bytes: int, as_json: bool) -> None:
    """Write every intent the bridge has not accepted yet into a bundle for `cloud-bridge import`.

    Signed with this device's key and encrypted to the bridge: the file reveals nothing and cannot
    be forged. Exported intents can no longer be cancelled here; they stay pending until a receipt
    (or the MQTT link) brings their results. Works while `run` is live.
    """
    from edge_outbox.bundle import export  # noqa: PLC0415 - keeps the other commands quick to start

    with connection(data_dir) as conn, progress_line("exported intents") as progress:
        done = export(
            conn, data_dir, out, max_bytes=max_bytes, now=now_ms(), new_id=IdGenerator(now_ms, os.urandom).new,
            progress=progress,
        )  # fmt: skip
    if as_json:
        print_json({**asdict(done), "file": str(out)})
        return
    click.echo(
        f"bundle {done.bundle_id}: {counted(done.intents, 'intent')}, {counted(done.confirms, 'confirm')},"
        f" {done.bytes:,} bytes -> {out}"
    )
    if done.left_out:
        # Not "export again": until a receipt says the bridge has this bundle's intents, the next export
        # takes them again first, and leaves out the same ones.
        click.echo(
            f"{counted(done.left_out, 'intent')} did not fit in this bundle (at most {MAX_BUNDLE_INTENTS:,} intents,"
            " within --max-bytes): they go in the bundle you export after this one's receipt is applied",
            err=True,
        )
    if done.identity_changed:
        click.echo(
            f"{counted(done.identity_changed, 'intent')} sent as the device this data dir was before it was enrolled"
            " again: ended failed/identity_changed, not sent again",
            err=True,
        )
    if done.unsendable:
        click.echo(
            f"{counted(done.unsendable, 'stored intent')} cannot be sent (stored by an older outbox):"
            " ended rejected/bad_json",
            err=True,
        )


@click.command(name="import-receipt")
@click.argument("receipt_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@bundle_size_option("receipt")
def import_receipt(data_dir: Path, receipt_file: Path, max_bytes: int, as_json: bool) -> None:
    """Apply a receipt from `cloud-bridge import` or `cloud-bridge receipt`: results, revocation, the bridge's time.

    Statuses reach the apps as over MQTT (within a second when `run` is live, else when it starts).
    """
    from edge_outbox.key_rotation import adopt_next_key, drop_refused, one_rotation  # noqa: PLC0415
    from edge_outbox.receipt import apply_receipt, read_receipt  # noqa: PLC0415

    body, acks = read_receipt(data_dir, _read(receipt_file, max_bytes, " (--max-bytes)"), max_bytes)
    # Not beside a running rotate-key: this receipt may switch to its next key, or delete it, under it. Refused
    # whole (a receipt applied again changes nothing it already changed).
    with one_rotation(data_dir, "then import this receipt again: nothing of it was applied"):
        with connection(data_dir) as conn:
            applied = apply_receipt(conn, body, acks, now_ms())
        if adopt_next_key(data_dir, body.next_key):
            applied = replace(applied, key_rotated=True)
        if body.rotation_refused is not None and drop_refused(data_dir, body.refused_key):
            applied = replace(applied, key_refused=body.rotation_refused)
    if as_json:
        doc = asdict(applied)
        # In RFC 3339, as every other time the two CLIs print (it was milliseconds since the epoch); 0: never
        learned = applied.clock.learned_at
        doc["clock"]["learned_at"] = format_ms(learned) if learned else None
        print_json(doc)
    else:
        states = ", ".join(f"{n} {state}" for state, n in sorted(applied.states.items())) or "no results"
        click.echo(f"receipt {applied.receipt_id}: {states}; {counted(applied.changed, 'intent')} changed state")
        offset = applied.clock.offset_ms
        if applied.corrected_ms:  # only what this receipt taught: one applied again (or an older one) teaches nothing
            side = "behind" if offset > 0 else "ahead of"
            click.echo(
                f"this device's clock is {format_age(abs(offset) / 1000)} {side} the bridge's; corrected by"
                f" {format_age(abs(applied.corrected_ms) / 1000)}"
            )
        if applied.key_rotated:
            click.echo("the bridge accepted this device's new key: it signs with it from now on")
    if applied.key_refused is not None:
        click.echo(
            f"the bridge refused this device's new key ({applied.key_refused}): it keeps signing with"
            " its current key; run `edge-outbox rotate-key --offline` again to propose another",
            err=True,
        )
    if applied.revoked:
        raise click.ClickException(
            f"this device is revoked at the bridge: {counted(applied.ended, 'pending intent')} ended"
        )


@click.command(name="flush")
@click.option(
    "--timeout",
    "timeout_text",
    default="5m",
    show_default=True,
    metavar="DURATION",
    help="Give up waiting after this long, e.g. 10m.",
)
def flush_cmd(data_dir: Path, timeout_text: str, as_json: bool) -> None:
    """Connect to the bridge now, forward everything, and wait until every intent has its result.

    For a temporary link: works outside --forward-window and while `run` is live (it asks the running
    outbox to connect). Exits 1 when intents are still pending at the timeout, or when revoked.
    """
    from edge_outbox.flush import flush  # noqa: PLC0415 - keeps the other commands quick to start

    try:
        timeout = parse_duration(timeout_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--timeout") from None

    shown: list[tuple[int, str]] = []

    def progress(done: int, total: int, link: str) -> None:
        if not shown or shown[-1] != (done, link):
            shown.append((done, link))
            click.echo(f"flush: {done:,}/{total:,} intents have their result; link {link}", err=True)

    result = asyncio.run(flush(data_dir, timeout, now_ms, progress))
    if as_json:
        print_json(asdict(result))
    else:
        ended = ", ".join(f"{n} {state}" for state, n in sorted(result.ended.items())) or "none"
        click.echo(
            f"{result.pending_before} pending at the start; ended meanwhile: {ended}; still pending: {result.pending}"
        )
    if result.revoked:
        raise click.ClickException("this device is revoked at the bridge: its pending intents were ended")
    if result.pending:
        raise click.ClickException(
            f"{counted(result.pending, 'intent')} still pending after {format_age(timeout)} (link {result.link}"
            f"{': ' + result.link_error if result.link_error else ''})"
        )


@click.command(name="enroll-request")
@click.option(
    "--ticket",
    "ticket_file",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The ticket from `cloud-bridge devices enroll-ticket` (one-time code and the bridge's keys).",
)
@click.option("--out", required=True, type=FileToWrite(), help="Request file to write.")
@click.option(
    "--new-key",
    is_flag=True,
    help="Replace the key an earlier enroll-request made here (its answer can no longer be imported).",
)
def enroll_request_cmd(data_dir: Path, ticket_file: Path, out: Path, new_key: bool) -> None:
    """Enroll a site that never connects, step 1: make this device's key and write a request for the bridge.

    The request is signed with the new key and encrypted to the bridge: the stick does not reveal the code.
    Run again (another ticket, a lost stick), it asks for the key made the first time, unless --new-key.
    The bridge answers with `cloud-bridge devices enroll-offline`; then run `edge-outbox enroll-import`.
    """
    from edge_outbox.offline_enroll import enroll_request  # noqa: PLC0415

    ticket = _read(ticket_file, ENROLL_FILE_BYTES)
    requested = enroll_request(data_dir, ticket, out, now_ms(), new_key=new_key)
    if requested.kept:
        click.echo(
            "the key made by the earlier enroll-request is kept: an answer to that request can still be imported"
        )
    elif requested.replaced:
        click.echo("the key made by the earlier enroll-request is replaced: an answer to that request is now refused")
    click.echo(f"enrollment request written to {out}; bring back the bridge's response for `edge-outbox enroll-import`")


@click.command(name="enroll-import")
@click.argument("response_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def enroll_import_cmd(data_dir: Path, response_file: Path, as_json: bool) -> None:
    """Enroll a site that never connects, step 2: apply the bridge's signed response to the request."""
    from edge_outbox.offline_enroll import enroll_import  # noqa: PLC0415

    in_doubt = intents_in_doubt(data_dir)
    identity = enroll_import(data_dir, _read(response_file, ENROLL_FILE_BYTES), now_ms())
    if as_json:
        print_json({**asdict(identity), "identity_changed": in_doubt})
    else:
        click.echo(f"enrolled as device {identity.device_id} (tenant {identity.tenant}, name {identity.name})")
        say_identity_changed(in_doubt)


def intents_in_doubt(data_dir: Path) -> int:
    """Intents sent and unanswered before enrolling again: the enrollment ends them (offline_ops.adopt_identity)."""
    from edge_outbox import offline_ops  # noqa: PLC0415

    if not db_path(data_dir).exists():
        return 0
    with connection(data_dir) as conn:
        return offline_ops.in_doubt(conn)


def say_identity_changed(ended: int) -> None:
    if ended:
        click.echo(
            f"{counted(ended, 'intent')} sent as the device this data dir was before"
            f" {'was' if ended == 1 else 'were'} ended failed/identity_changed:"
            " the bridge has them under that device, and they are not sent again as this one",
            err=True,
        )


@click.command(name="rotate-key")
@click.option(
    "--offline", is_flag=True, help="Carry the proposal in the next bundle (`export`) instead of sending it now."
)
def rotate_key_cmd(data_dir: Path, offline: bool) -> None:
    """Replace this device's key pair without a new enrollment code (proved with the current key).

    The bridge accepts the new key beside the old one until the new one's first use; from then on
    the old key no longer works. Safe to run again when it failed halfway; a second run while one runs is
    refused.
    """
    from edge_outbox.key_rotation import one_rotation, propose_offline, rotate_online  # noqa: PLC0415

    identity = load_identity(data_dir)
    if identity is None:
        raise click.ClickException("not enrolled: there is no key to rotate")
    with one_rotation(data_dir):
        if offline or not identity.http_url:
            propose_offline(data_dir, identity, now_ms())
            click.echo("the new key goes to the bridge in the next bundle; the receipt that accepts it switches to it")
            return
        rotate_online(data_dir, identity, now_ms())
    click.echo(f"device {identity.device_id} signs with its new key; the old one ends at the new one's first use")


def register(group: click.Group) -> None:
    """Add these commands to `edge-outbox`, with its --data-dir (every one) and --json (those that print data)."""
    for command in (export_cmd, import_receipt, flush_cmd, enroll_import_cmd):
        group.add_command(json_option(data_dir_option(command)))
    for command in (enroll_request_cmd, rotate_key_cmd):
        group.add_command(data_dir_option(command))
