"""The device's identity: its private key (made here, never sent), its id and the bridge's pinned CA.

Files in DATA_DIR/identity/: `device.key` (mode 0600), `ca.pem` (the CA that must have signed the
bridge's certificate) and `device.json` (device id, tenant, name, bridge address, audience); until an
online enrollment's answer is kept, `enroll.pending` (the key made for its code, mode 0600).
What a connection makes of them (TLS, tokens) is bridge_access.py; enrollment is enroll_client.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_outbox.bridge_pins import BridgePins, save_pins
from edge_outbox.errors import ConfigError
from intent_contract.files import write_atomic
from intent_contract.names import is_name

IDENTITY_DIR = "identity"
DEVICE_KEY = "device.key"


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


def key_file(data_dir: Path) -> Path:
    """The device's private key (PEM, mode 0600)."""
    return identity_dir(data_dir) / DEVICE_KEY


def save_identity(
    data_dir: Path, identity: Identity, key_pem: bytes, ca: Path | bytes, pins: BridgePins | None
) -> None:
    """Keep an identity: the device key (0600), the CA to pin, the bridge's offline keys, device.json last.

    Each written whole and synced (write_atomic) before the next: device.json marks the outbox as enrolled,
    and written in place, unsynced, a power cut after it could leave it beside an empty device.key (the
    device enrolled at the bridge, its code spent, and unable to sign anything here).
    """
    directory = identity_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    write_atomic(key_file(data_dir), key_pem, mode=0o600)
    if isinstance(ca, bytes):
        if ca:  # enrolled offline without a CA: nothing to pin until the site may go online
            write_atomic(ca_file(data_dir), ca)
    else:
        write_atomic(ca_file(data_dir), ca.read_bytes())
    if pins is not None:
        save_pins(directory, pins)
    write_atomic(directory / "device.json", (json.dumps(asdict(identity), indent=2) + "\n").encode())
