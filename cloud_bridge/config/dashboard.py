"""`[dashboard]`: who may log in to the operators' dashboard, and the key that signs their sessions.

    [dashboard]
    session_key_env = "DASHBOARD_SESSION_KEY"   # or session_key_file; made at start when absent (one node)
    [dashboard.operators]
    alice = "scrypt$16384$8$1$..."              # cloud-bridge dashboard hash-password

No operators: no dashboard (every /ui/ page is 404). The key must be shared by all nodes behind one
load balancer, so that a session made on one node is accepted on the others.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from cloud_bridge.config.fields import Name, SecretSection, Text, invalid

MIN_KEY_CHARS = 32


def _scrypt_hash(value: str) -> str:
    if not value.startswith("scrypt$"):
        raise invalid("must be a hash from `cloud-bridge dashboard hash-password`")
    return value


class DashboardConfig(SecretSection):
    """`[dashboard]`: the operators and the session key."""

    SECRETS = ("session_key",)

    operators: dict[Name, Annotated[str, AfterValidator(_scrypt_hash)]] = Field(
        {}, description="login name = scrypt hash (`cloud-bridge dashboard hash-password`); none: no dashboard"
    )
    session_key_env: Text | None = Field(None, description="environment variable holding the session key")
    session_key_file: Text | None = Field(None, description="file holding the session key")

    def required(self, name: str) -> bool:
        return False  # one node may make its own key at start

    def secret_problems(self) -> list[str]:
        key = self.secret("session_key")
        if key is not None and len(key.reveal()) < MIN_KEY_CHARS:
            return [f"the session key must be at least {MIN_KEY_CHARS} characters"]
        return []

    @property
    def enabled(self) -> bool:
        return bool(self.operators)

    def key_bytes(self) -> bytes | None:
        """The session key; None when none is configured (the node makes one at start: sessions end with it)."""
        key = self.secret("session_key")
        return None if key is None else key.reveal().encode()
