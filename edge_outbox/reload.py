"""SIGHUP (`systemctl reload edge-outbox`): the running outbox reads its enrollment files again.

What a reload takes: the bridge's address in DATA_DIR/identity/device.json (`bridge_host`, `mqtt_port`,
`http_url`; a bridge that moved) and the CA in identity/ca.pem (which each connect reads anyway): the forwarder
is made anew on them and connects at once, instead of at the end of its backoff. What it cannot take, said in
the log and changing nothing: another device in device.json (enrolled again: intents sent as the old one must
end first), a first enrollment, a device.json that does not read, and `run`'s own flags and config file (a changed
file is named with its changed keys); each takes a restart.
Before, the outbox had no SIGHUP handler: the signal's default action ended it, and systemd, which counts
SIGHUP as a clean exit, did not start it again under Restart=on-failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_outbox.errors import ConfigError
from edge_outbox.identity import Identity, load_identity

log = logging.getLogger(__name__)


def identity_to_forward(data_dir: Path, running_as: str | None) -> Identity | None:
    """The identity to forward with after a reload; None (with the reason logged) when the reload takes none."""
    try:
        identity = load_identity(data_dir)
    except ConfigError as exc:
        log.error("reload refused: %s; forwarding goes on as before", exc)
        return None
    if identity is None:
        log.error("reload refused: %s has no device.json (not enrolled); forwarding goes on as before", data_dir)
        return None
    if running_as is None:
        log.warning(
            "reload: enrolled as device %s since this outbox started: restart `edge-outbox run` to forward as it",
            identity.device_id,
        )
        return None
    if identity.device_id != running_as:
        log.error(
            "reload refused: device.json is now device %s, this outbox runs as %s (enrolled again?): restart"
            " `edge-outbox run`; forwarding goes on as before",
            identity.device_id,
            running_as,
        )
        return None
    return identity


async def reload_at_each(
    hup: asyncio.Event, reload: Callable[[], Awaitable[None]], config_changed: Callable[[], str | None] | None = None
) -> None:
    """One reload per SIGHUP (`hup` set by its handler; several while one runs: one more after it). `config_changed`
    says whether `run`'s config file differs from the one the outbox started with (it is not read again)."""
    while True:
        await hup.wait()
        hup.clear()
        log.info("SIGHUP: reloading")
        try:
            await reload()
        except Exception:
            log.exception("reload failed; the outbox goes on as before")
        if config_changed is not None and (said := config_changed()) is not None:
            log.warning("reload: %s", said)
