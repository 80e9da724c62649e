"""What the executor needs from an integration: run one intent, or raise a bridge error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Job:
    """One intent, admitted by policy, handed to an integration."""

    device_id: str
    tenant: str
    intent_id: str
    kind: str
    payload: dict[str, Any]
    attempt: int
    # What policy decided for this device, e.g. the from-address to use for email.
    overrides: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        """Key for providers that take one: stable across resends and executor retries."""
        return f"{self.device_id}:{self.intent_id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A successful execution: a short provider reference for the audit log (no secrets)."""

    detail: str = ""


class Integration(Protocol):
    """An integration for one kind. Raises TransientError or PermanentError; never leaks its secret."""

    kind: str
    # How many jobs of this kind the executor may run at once.
    concurrency: int

    async def execute(self, job: Job) -> Outcome: ...

    async def aclose(self) -> None: ...
