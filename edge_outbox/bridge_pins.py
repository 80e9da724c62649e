"""The bridge's offline keys as this device pins them (`DATA_DIR/identity/bridge.json`).

Given at enrollment (the HTTPS answer, or the signed offline enrollment response): the id of the
bridge's offline key pair, the age recipient bundles are encrypted to, and the P-256 public key
receipts must be signed with. A receipt signed with any other key is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_outbox.errors import ConfigError, PermanentError
from intent_contract import sealed
from intent_contract.files import write_atomic
from intent_contract.names import is_name

PINS_FILE = "bridge.json"


@dataclass(frozen=True, slots=True)
class BridgePins:
    key_id: str
    recipient: str
    signing_key: str

    def __post_init__(self) -> None:
        if not is_name(self.key_id) or not sealed.is_recipient(self.recipient) or not _p256(self.signing_key):
            raise ConfigError("the bridge's offline keys are malformed (key_id, recipient, signing_key)")

    @classmethod
    def from_json(cls, data: Any) -> BridgePins:
        if not isinstance(data, dict):
            raise ConfigError("the bridge's offline keys must be a JSON object")
        try:
            return cls(str(data["key_id"]), str(data["recipient"]), str(data["signing_key"]))
        except KeyError as exc:
            raise ConfigError(f"the bridge's offline keys lack {exc}") from None


def _p256(pem: str) -> bool:
    """Whether `pem` is a P-256 public key. It was only looked for "PUBLIC KEY" in: a ticket's key that no
    receipt could ever verify with was pinned, and each receipt was then refused as not verifying."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeError):
        return False
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def save_pins(identity_dir: Path, pins: BridgePins) -> None:
    write_atomic(identity_dir / PINS_FILE, (json.dumps(asdict(pins), indent=2) + "\n").encode())


def load_pins(identity_dir: Path) -> BridgePins:
    """The pinned keys; PermanentError when this device has none (enrolled before offline bundles existed)."""
    path = identity_dir / PINS_FILE
    if not path.exists():
        raise PermanentError(
            f"no bridge offline keys pinned in {path}: this device was enrolled by a bridge before offline bundles;"
            " let `edge-outbox run` connect to the (upgraded) bridge once, which pins them"
        )
    try:
        return BridgePins.from_json(json.loads(path.read_text()))
    except ValueError as exc:
        raise ConfigError(f"{path} is damaged ({exc})") from None
