"""Connect-time authentication of devices: an enrolled, unrevoked id and a fresh ES256 token of its key.

CONNECT needs client id = username = the device id and a password that is a JWT of that device
(cloud_bridge.tokens) whose jti was not seen before (the store's replay cache). Every refusal is
logged with a code and the source address, never the token, and told to a ConnectTelemetry when it
names an enrolled device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from cloud_bridge.device_keys import verify_with_device_key
from cloud_bridge.errors import AuthError, BridgeError
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Device, Registry
from cloud_bridge.tokens import MemoryReplayCache, ReplayCache, TokenClaims, verify_device_token
from intent_contract.logs import LogThrottle, left_out
from intent_contract.names import is_name

logger = logging.getLogger(__name__)


class ConnectTelemetry(Protocol):
    """Told of every CONNECT that names an enrolled device (fleet_desk): cheap, in memory."""

    def connected(self, device_id: str, address: str, at: float) -> None: ...

    def refused(self, device_id: str, address: str, code: str, at: float) -> None: ...


class DeviceGate:
    """Connect-time authentication against the registry, with a jti replay cache (the store's)."""

    def __init__(
        self,
        registry: Registry,
        audience: str,
        *,
        replay: ReplayCache | None = None,
        clock: Callable[[], float] = time.time,
        on_refused: Callable[[str], None] | None = None,
        telemetry: ConnectTelemetry | None = None,
    ) -> None:
        self._registry = registry
        self._audience = audience
        self._refusal_logs: dict[str, LogThrottle] = {}  # by refusal code, a small fixed set
        self._clock = clock
        self._replay = replay if replay is not None else MemoryReplayCache()
        self._on_refused = on_refused
        self._telemetry = telemetry

    async def authenticate(
        self, client_id: str | None, username: str | None, password: str | bytes | None, address: str = ""
    ) -> str | None:
        """The device key (PEM) the CONNECT (from source `address`) proved, or None when it is refused: every
        refusal is counted (`on_refused`, telemetry) and logged with a code and the address, never the token,
        at most once a second per code. The session lives while that key authenticates the device
        (revocations.py ends it when the key is replaced)."""
        device: Device | None = None
        try:
            device = await self._lookup(client_id, username)
            key = await self._check(device, password)
        except BridgeError as exc:
            # Not only AuthError: a store that cannot be read (the database is down) refuses too.
            self._refused(exc.code if isinstance(exc, AuthError) else "store_unavailable", device, username, address)
            return None
        except Exception:  # noqa: BLE001 - logged with its traceback in _refused
            # A fault of ours (a stored row this version cannot read, a bug): refused like the rest, with its
            # traceback; before, it went past the door's handler to asyncio's "Task exception was never retrieved".
            self._refused("internal_error", device, username, address, exc_info=True)
            return None
        if self._telemetry is not None:
            self._telemetry.connected(device.device_id, address, self._clock())
        return key

    def _refused(
        self, code: str, device: Device | None, username: str | None, address: str, *, exc_info: bool = False
    ) -> None:
        # At most a line a second per code: connects with bad tokens need no credentials at all (the metric and
        # the fleet telemetry count every refusal).
        not_logged = self._refusal_logs.setdefault(code, LogThrottle()).allow(self._clock())
        if not_logged is not None:
            logger.log(
                logging.ERROR if exc_info else logging.WARNING, "device connect refused%s", left_out(not_logged),
                exc_info=exc_info,
                extra={"device_id": username, "code": code, "peer": address, "not_logged": not_logged},
            )  # fmt: skip
        if self._on_refused is not None:
            self._on_refused(code)
        # Only enrolled ids are remembered: a stranger's guesses cannot grow the store.
        if device is not None and self._telemetry is not None:
            self._telemetry.refused(device.device_id, address, code, self._clock())

    async def _lookup(self, client_id: str | None, username: str | None) -> Device:
        if not username or not is_name(username) or client_id != username:
            raise AuthError("client id and username must both be the device id", code="bad_identity")
        device = await own_thread(self._registry.get, username)
        if device is None:
            raise AuthError("unknown device", code="unknown_device")
        return device

    async def _check(self, device: Device, password: str | bytes | None) -> str:
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if not password:
            raise AuthError("no token", code="token_invalid")
        if device.revoked:
            raise AuthError("device is revoked", code="device_revoked")
        now = self._clock()
        token = password

        def verify(key: str) -> tuple[str, TokenClaims]:
            claims = verify_device_token(
                token, device_id=device.device_id, public_key_pem=key, audience=self._audience, now=now
            )
            return key, claims

        key, claims = await own_thread(verify_with_device_key, self._registry, device, verify, self._clock)
        await self._replay.check_and_add(claims, now)
        return key
