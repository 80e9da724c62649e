"""Device keys and the short-lived JWT a device signs as its MQTT password (ES256)."""

from __future__ import annotations

import secrets

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
DEFAULT_AUDIENCE = "cloud-bridge"
MAX_LIFETIME_S = 3600


def generate_private_key_pem() -> bytes:
    """A new P-256 private key in PKCS#8 PEM; it is made on the device and never leaves it."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(private_key_pem: bytes) -> str:
    """The SubjectPublicKeyInfo PEM of a private key, as sent at enrollment."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def is_private_key(data: bytes) -> bool:
    """Whether `data` is a private key `public_key_pem` can read (an empty file left by a write cut short,
    or a damaged one, is not)."""
    try:
        public_key_pem(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def sign_device_token(
    private_key_pem: bytes, device_id: str, now: int, *, lifetime_s: int = 600, audience: str = DEFAULT_AUDIENCE
) -> str:
    """A JWT with sub, aud, iat, exp and jti, signed with the device key; `now` is in seconds."""
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"token lifetime must be 1..{MAX_LIFETIME_S} s")
    claims = {"sub": device_id, "aud": audience, "iat": now, "exp": now + lifetime_s, "jti": secrets.token_hex(12)}
    return jwt.encode(claims, private_key_pem, algorithm=ALGORITHM)
