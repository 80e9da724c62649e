"""Audit records of refusals that no ledger row stands for: envelopes that break their schema, batches of a
wire version the bridge does not speak, and refused connects of enrolled devices.

Policy, limit, too-old and expired-on-arrival refusals are audited by admission itself (ledger_plan);
these are written with `Ledger.note`. Refused connects are audited at most once per device, code and
`window` (the next record counts those left out), so a client replaying bad tokens for a known device
id cannot grow the audit table faster than that; every refusal still reaches the fleet telemetry and
the `bridge_connects_refused_total` metric. A connect naming no enrolled device is never audited: it
names no tenant, and a stranger's guesses must not grow the store (it is logged and counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from cloud_bridge.audit import AuditEvent, AuditRecord
from cloud_bridge.device_gate import ConnectTelemetry
from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger import DeviceLike, Ledger
from cloud_bridge.own_threads import own_thread
from intent_contract.codec import Ack

logger = logging.getLogger(__name__)

CONNECT_WINDOW_S = 60.0
_MAX_KEYS = 10_000  # (device, code) pairs remembered; older ones are forgotten first


def schema_refusals(device: DeviceLike, invalid: Sequence[tuple[str, str, str, str]], now: float) -> list[AuditRecord]:
    """One `reject` record per envelope that broke its schema ((id or #index, code, detail, kind) from the codec).

    With its kind when the envelope named a known one: `Ledger.note` counts a refusal in usage only under
    a kind, and without it an email.send refused for its payload was in the audit and missing from usage.
    """
    return [
        AuditRecord(now, device.device_id, device.tenant, ident, kind, AuditEvent.REJECT, code=code, detail=text[:200])
        for ident, code, text, kind in invalid
    ]


def version_refusals(device: DeviceLike, acks: Sequence[Ack], now: float) -> list[AuditRecord]:
    """One `reject` record per intent of a batch refused for its wire version."""
    return [
        AuditRecord(now, device.device_id, device.tenant, a.id, "", AuditEvent.REJECT, code=a.code, detail=a.detail)
        for a in acks
    ]


class RefusalThrottle:
    """Which refused connects to audit: the first per (device, code) in each window, with the count left out."""

    def __init__(self, window: float = CONNECT_WINDOW_S) -> None:
        self._window = window
        self._last: dict[tuple[str, str], float] = {}
        self._left_out: dict[tuple[str, str], int] = {}

    def take(self, device_id: str, code: str, at: float) -> int | None:
        """None: leave this one out; else audit it, and this many were left out before it."""
        key = (device_id, code)
        last = self._last.get(key)
        if last is not None and at - last < self._window:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        if len(self._last) >= _MAX_KEYS:
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest)
            self._left_out.pop(oldest, None)
        self._last.pop(key, None)  # re-inserted last: dict order stays oldest first
        self._last[key] = at
        return self._left_out.pop(key, 0)


class ConnectAudit:
    """The gate's ConnectTelemetry: passes every sighting on to `inner` (the fleet desk) and audits refusals."""

    def __init__(
        self,
        inner: ConnectTelemetry,
        ledger: Ledger,
        tenant_of: Callable[[str], str | None],
        *,
        window: float = CONNECT_WINDOW_S,
    ) -> None:
        self._inner = inner
        self._ledger = ledger
        self._tenant_of = tenant_of
        self._throttle = RefusalThrottle(window)
        self._tasks: set[asyncio.Task[None]] = set()

    def connected(self, device_id: str, address: str, at: float) -> None:
        self._inner.connected(device_id, address, at)

    def refused(self, device_id: str, address: str, code: str, at: float) -> None:
        self._inner.refused(device_id, address, code, at)
        left_out = self._throttle.take(device_id, code, at)
        if left_out is None:
            return
        detail = f"connect refused from {address or 'an unknown address'}"
        if left_out:
            detail += f"; {left_out} more refused for this reason since the last audited one"
        task = asyncio.get_running_loop().create_task(self._write(device_id, code, detail, at), name="audit-refusal")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, device_id: str, code: str, detail: str, at: float) -> None:
        try:
            tenant = await own_thread(self._tenant_of, device_id)
            record = AuditRecord(at, device_id, tenant or "", "", "", AuditEvent.REFUSE, code=code, detail=detail)
            await self._ledger.note([record])
        except BridgeError as exc:  # the store is down: the log line and the metric remain
            logger.warning("refused connect not audited: %s", exc.code, extra={"device_id": device_id, "code": code})

    async def close(self) -> None:
        """Wait for the audit writes under way (before the store closes)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
