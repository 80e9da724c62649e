"""The device's identity: its private key (made here, never sent), its id and the bridge's pinned CA.

Files in DATA_DIR/identity/: `device.key` (mode 0600), `ca.pem` (the CA that must have signed the
bridge's certificate) and `device.json` (device id, tenant, name, bridge address, audience).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from edge_outbox.errors import ConfigError, PermanentError, TransientError
from intent_contract.device_token import generate_private_key_pem, public_key_pem, sign_device_token
from intent_contract.names import is_name

IDENTITY_DIR = "identity"


@dataclass(frozen=True, slots=True)
class Identity:
    device_id: str
    tenant: str
    name: str
    bridge_host: str
    mqtt_port: int
    http_url: str
    audience: str

    def __post_init__(self) -> None:
        if not is_name(self.device_id):
            raise ConfigError(f"device id {self.device_id!r} from the bridge is not a valid name")


def identity_dir(data_dir: Path) -> Path:
    return data_dir / IDENTITY_DIR


def load_identity(data_dir: Path) -> Identity | None:
    """The enrolled identity, or None when this outbox was never enrolled."""
    path = identity_dir(data_dir) / "device.json"
    if not path.exists():
        return None
    try:
        return Identity(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is damaged ({exc}); re-enroll after moving {identity_dir(data_dir)} away") from None


def ca_file(data_dir: Path) -> Path:
    return identity_dir(data_dir) / "ca.pem"


def client_tls_context(data_dir: Path) -> ssl.SSLContext:
    """TLS that trusts only the pinned CA and checks the bridge's host name: never unverified."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file(data_dir)))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def device_token(data_dir: Path, identity: Identity, now: int, lifetime_s: int) -> str:
    """A fresh JWT for one connect (the bridge refuses a token id it has seen before)."""
    key = (identity_dir(data_dir) / "device.key").read_bytes()
    return sign_device_token(key, identity.device_id, now, lifetime_s=lifetime_s, audience=identity.audience)


def enroll(data_dir: Path, bridge_url: str, code: str, ca: Path) -> Identity:
    """Make a key here, register its public half with the bridge, and keep the identity on disk."""
    existing = load_identity(data_dir)
    if existing is not None:
        raise PermanentError(
            f"already enrolled as device {existing.device_id} with {existing.http_url}; to enroll again, "
            f"move {identity_dir(data_dir)} away first (the bridge can revoke the old device)"
        )
    parts = urlsplit(bridge_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"--bridge {bridge_url!r}: expected https://HOST[:PORT] (the bridge's enrollment address)")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca {ca}: not a readable PEM CA certificate ({exc})") from None
    key_pem = generate_private_key_pem()
    url = bridge_url.rstrip("/") + "/v1/enroll"
    try:
        response = httpx.post(
            url,
            json={"code": code, "public_key": public_key_pem(key_pem)},
            verify=context,
            timeout=30,
            follow_redirects=False,
        )
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise PermanentError(f"the bridge at {bridge_url} has a certificate not signed by {ca}") from None
        raise TransientError(f"cannot reach the bridge at {bridge_url}: {exc}") from None
    except httpx.HTTPError as exc:
        raise TransientError(f"enrollment request to {bridge_url} failed: {exc}") from None
    if response.status_code != 201:
        try:
            reason = response.json().get("detail", "")
        except ValueError:
            reason = response.reason_phrase
        raise PermanentError(f"the bridge refused enrollment (HTTP {response.status_code}): {reason}")
    body = response.json()
    identity = Identity(
        device_id=body["device_id"],
        tenant=body["tenant"],
        name=body["name"],
        bridge_host=parts.hostname,
        mqtt_port=int(body["mqtt_port"]),
        http_url=bridge_url.rstrip("/"),
        audience=body["audience"],
    )
    _save(data_dir, identity, key_pem, ca)
    return identity


def _save(data_dir: Path, identity: Identity, key_pem: bytes, ca: Path) -> None:
    directory = identity_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key_path = directory / "device.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    shutil.copyfile(ca, ca_file(data_dir))
    # device.json last: its presence is what marks the outbox as enrolled.
    (directory / "device.json").write_text(json.dumps(asdict(identity), indent=2) + "\n")
