"""Encryption of offline bundles to the bridge with age (https://age-encryption.org/v1), via pyrage.

age is a small, well-specified file format (X25519 recipients, ChaCha20-Poly1305 in 64 KiB chunks)
with no options to get wrong; pyrage binds the Rust implementation (rage). age does not say who
encrypted a file: bundles are signed by the device inside the encryption (intent_contract.signed).
This is the only module that imports pyrage; its exceptions become ours here.
"""

from __future__ import annotations

import pyrage

from intent_contract.errors import DecodeError, NotSealedError, OtherRecipientError

RECIPIENT_PREFIX = "age1"
IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
MAGIC = b"age-encryption.org/v1\n"  # every age file's first line (age-encryption.org/v1, "Header")
# rage's words for a header none of whose stanzas opens with the identity given: the one way to tell a file
# for another key from a damaged one (tests/unit/test_offline_files.py fails if an upgrade changes them).
_NO_MATCHING_KEY = "No matching keys found"


def new_identity() -> tuple[str, str]:
    """A fresh X25519 key: (secret identity, public recipient)."""
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def recipient_of(identity: str) -> str:
    """The public recipient of a secret identity."""
    return str(_identity(identity).to_public())


def is_recipient(text: str) -> bool:
    try:
        pyrage.x25519.Recipient.from_str(text)
    except pyrage.RecipientError:
        return False
    return True


def seal(data: bytes, recipient: str) -> bytes:
    """`data` encrypted to `recipient` (an age1... string)."""
    try:
        target = pyrage.x25519.Recipient.from_str(recipient)
    except pyrage.RecipientError as exc:
        raise DecodeError(f"not an age recipient: {exc}") from exc
    sealed: bytes = pyrage.encrypt(data, [target])
    return sealed


def is_sealed(data: bytes) -> bool:
    """Whether `data` starts as an age file does (whole or not)."""
    return data.startswith(MAGIC)


def unseal(data: bytes, identity: str) -> bytes:
    """The plaintext of `data`. NotSealedError when it is not age at all, OtherRecipientError when it is encrypted
    to another key, DecodeError when it is damaged or cut short (a copy ended early: a stick pulled out)."""
    if not is_sealed(data) and not MAGIC.startswith(data):  # an empty file, or a start of one, is one cut short
        raise NotSealedError("not an age-encrypted file", data[:64])
    try:
        plain: bytes = pyrage.decrypt(data, [_identity(identity)])
    except pyrage.DecryptError as exc:
        if str(exc) == _NO_MATCHING_KEY:
            raise OtherRecipientError("not encrypted to this key", data[:64], exc) from exc
        raise DecodeError(f"damaged or cut short ({exc})", data[:64], exc) from exc
    return plain


def _identity(identity: str) -> pyrage.x25519.Identity:
    try:
        return pyrage.x25519.Identity.from_str(identity)
    except pyrage.IdentityError as exc:
        raise DecodeError("not an age identity") from exc
