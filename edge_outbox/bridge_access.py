"""What the edge shows and trusts on each connection to the bridge, from its identity on disk.

TLS that trusts only the CA pinned at enrollment, a fresh device token for every connect, and the
bound on the bridge's HTTPS answers. Enrollment itself (before there is an identity) is enroll_client.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edge_outbox.identity import Identity, ca_file, key_file
from intent_contract.device_token import sign_device_token

ANSWER_LIMIT = 64 * 1024  # the bridge's HTTPS answers are small; anything larger is refused unread


def client_tls_context(data_dir: Path) -> ssl.SSLContext:
    """TLS that trusts only the pinned CA and checks the bridge's host name: never unverified."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file(data_dir)))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def device_token(data_dir: Path, identity: Identity, now: int, lifetime_s: int) -> str:
    """A fresh JWT for one connect (the bridge refuses a token id it has seen before)."""
    key = key_file(data_dir).read_bytes()
    return sign_device_token(key, identity.device_id, now, lifetime_s=lifetime_s, audience=identity.audience)
