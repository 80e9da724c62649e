"""Audit records: who asked for what, what policy and the providers said, and when.

Audit rows are written by the ledger in the same transaction as the state change they describe, so
the log and the ledger never disagree. Refusals no ledger row stands for (an envelope that breaks its
schema, a batch of a wire version the bridge does not speak, a refused connect) are appended on their
own (`Ledger.note`). They carry no payloads and no secrets: ids, kind, event, code and a short detail
only. Every record names its tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from intent_contract.timefmt import format_ms


class AuditEvent(StrEnum):
    """What happened to an intent."""

    ACCEPT = "accept"  # admitted by policy, queued
    REJECT = "reject"  # refused by policy, never executed
    EXPIRE = "expire"  # past its deadline before it ran
    DELIVER = "deliver"  # the provider took it
    FAIL = "fail"  # ended failed (permanent error, attempts exhausted, no integration)
    RETRY = "retry"  # a transient error, or a restart after a crash; it runs again later
    REFUSE = "refuse"  # a connect of an enrolled device refused (bad token, revoked, ...); no intent
    REQUEUE = "requeue"  # an operator put a failed or expired intent back in the queue (a new attempt)
    CANCEL = "cancel"  # an operator ended a queued intent before it ran (failed, code `cancelled`)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit log."""

    at: float  # seconds since the epoch
    device_id: str
    tenant: str
    intent_id: str
    kind: str
    event: AuditEvent
    integration: str = ""
    code: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if self.at < 0:
            raise ValueError("audit time before the epoch")
        if not self.device_id:
            raise ValueError("audit record needs a device")
        if not self.intent_id and self.event is not AuditEvent.REFUSE:
            raise ValueError("audit record of an intent needs its id")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, with `at` as RFC 3339 (for `--json` output and exports)."""
        return {
            "at": format_ms(int(self.at * 1000)),
            "device_id": self.device_id,
            "tenant": self.tenant,
            "intent_id": self.intent_id,
            "kind": self.kind,
            "event": str(self.event),
            "integration": self.integration,
            "code": self.code,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A validated audit filter: one device (or tenant) or all, from `since` on, at most `limit` records."""

    device_id: str | None = None
    since: float | None = None
    limit: int = 1000
    tenant: str | None = None

    MAX_LIMIT = 100_000

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= self.MAX_LIMIT:
            raise ValueError(f"audit limit must be within 1..{self.MAX_LIMIT}")
        if self.device_id is not None and not self.device_id:
            raise ValueError("empty device id; use None for all devices")
        if self.tenant is not None and not self.tenant:
            raise ValueError("empty tenant; use None for all tenants")
