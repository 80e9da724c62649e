"""The bridge's offline keys: what bundles are encrypted to and what receipts are signed with.

Two keys of the bridge's own, kept with its data (`DATA_DIR/offline-keys/`, mode 0700, files 0600),
separate from the TLS server key (which the certificate's owner may rotate at will and which serves
another purpose) and from any provider key:
- `age.key`: an age X25519 identity; devices encrypt bundles to its recipient (`age1...`);
- `sign.key`: a P-256 key; receipts and enrollment responses are signed with it (ES256).
Their public halves and a key id go to every device at enrollment, which pins them. They are made
on first use, by whichever process gets there first (made aside, then renamed into place, so two
processes never end up with different keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloud_bridge.errors import ConfigError
from intent_contract import sealed
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.errors import DecodeError
from intent_contract.files import fsync_directory

KEYS_DIR = "offline-keys"
_AGE, _SIGN = "age.key", "sign.key"


@dataclass(frozen=True, slots=True)
class BridgePublicKeys:
    """What a device pins: the key id, the age recipient bundles go to, the receipt-signing key (PEM)."""

    key_id: str
    recipient: str
    signing_key: str

    def to_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "recipient": self.recipient, "signing_key": self.signing_key}


@dataclass(frozen=True, slots=True)
class OfflineKeys:
    public: BridgePublicKeys
    age_identity: str = field(repr=False)
    signing_key: bytes = field(repr=False)


def key_id(recipient: str, signing_key_pem: str) -> str:
    """A short stable name for the pair: the first 16 hex digits of SHA-256 over both public halves."""
    return hashlib.sha256(f"{recipient}\n{signing_key_pem.strip()}".encode()).hexdigest()[:16]


def keys_dir(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR


def load_or_create(data_dir: Path) -> OfflineKeys:
    """The bridge's offline keys, made on first use; ConfigError when they exist but cannot be read."""
    directory = keys_dir(data_dir)
    if not directory.exists():
        _create(directory)
    try:
        age_identity = (directory / _AGE).read_text().strip()
        signing_key = (directory / _SIGN).read_bytes()
        public = BridgePublicKeys("", sealed.recipient_of(age_identity), public_key_pem(signing_key))
    except (OSError, ValueError, DecodeError) as exc:
        raise ConfigError(f"offline keys in {directory} cannot be read: {exc}", code="offline_keys") from None
    return OfflineKeys(
        BridgePublicKeys(key_id(public.recipient, public.signing_key), public.recipient, public.signing_key),
        age_identity,
        signing_key,
    )


def load_for_store(data_dir: Path, recorded: Callable[[str | None], str | None]) -> OfflineKeys:
    """The offline keys in `data_dir`, which must be those the store's bridges use: `recorded` is its registry's
    `offline_key_id`, which records the first ones (a store of one data dir records none).
    ConfigError, with what to do, for a data dir without keys beside a store whose devices pin some, and for
    keys that are not those.

    Each node and operator's machine keeps its own copy (docs/scale-out.md). One started without it made keys of
    its own: devices enrolled through it pinned keys the other nodes did not hold, and their bundles and
    receipts were refused there."""
    directory = keys_dir(data_dir)
    pinned = recorded(None)
    if pinned is not None and not directory.exists():
        raise ConfigError(
            f"no offline keys in {directory}, and this store's bridges use the keys {pinned}: copy their"
            " offline-keys directory there (every node must hold the same ones: docs/scale-out.md)",
            code="offline_keys",
        )
    keys = load_or_create(data_dir)
    pinned = recorded(keys.public.key_id)
    if pinned != keys.public.key_id:
        raise ConfigError(
            f"the offline keys in {directory} ({keys.public.key_id}) are not the ones this store's bridges use"
            f" ({pinned}): put their offline-keys directory there (every node must hold the same ones:"
            " docs/scale-out.md)",
            code="offline_keys",
        )
    return keys


def _create(directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    aside = directory.with_name(f".{KEYS_DIR}.{os.getpid()}")
    try:
        aside.mkdir(mode=0o700)
        identity, _recipient = sealed.new_identity()
        _write_secret(aside / _AGE, identity.encode() + b"\n")
        _write_secret(aside / _SIGN, generate_private_key_pem())
        fsync_directory(aside)  # the files' names in it
        with contextlib.suppress(OSError):  # another process made them first: theirs stand
            aside.rename(directory)
        # The rename itself: devices pin these keys from the first ticket or enrollment on, and a power cut
        # that undid it left new keys made at the next start, every pinned device's bundles unreadable.
        fsync_directory(directory.parent)
    except OSError as exc:
        raise ConfigError(f"cannot make offline keys in {directory}: {exc}", code="offline_keys") from None
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
