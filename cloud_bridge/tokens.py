"""Verification of the short-lived ES256 JWT a device presents as its MQTT password.

Pure: the caller passes the device's stored public key and `now`; nothing here reads the clock.
pyjwt checks the signature, audience and required claims; the time checks are done here against the
injected `now` (pyjwt would read the wall clock).
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_bridge.errors import AuthError, SignedTokenError
from intent_contract.device_token import ALGORITHM, MAX_LIFETIME_S

LEEWAY_S = 30.0
# Live tokens one device may hold in the replay cache: a connect every 9 s for a whole 900 s token lifetime.
DEFAULT_TOKENS_PER_DEVICE = 100
REQUIRED_CLAIMS = ("exp", "iat", "aud", "sub", "jti")
_MAX_TOKEN_CHARS = 4096
_JTI = re.compile("[!-~]{8,128}")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The claims of a verified device token."""

    device_id: str
    jti: str
    iat: float
    exp: float

    def __post_init__(self) -> None:
        if self.exp <= self.iat:
            raise ValueError("token exp must be after iat")


def load_device_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in an SPKI PEM, or AuthError('bad_public_key')."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise AuthError("public key is not a valid SPKI PEM", code="bad_public_key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AuthError("public key must be an EC P-256 key", code="bad_public_key")
    return key


def _number(claims: dict[str, object], name: str) -> float:
    """A time claim as a finite float: NaN compares false with everything (an `exp` of NaN never expired, and
    the replay cache never let its entry go), and an integer past the float range raised OverflowError."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignedTokenError(f"claim {name} must be a number", code="token_invalid")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SignedTokenError(f"claim {name} must be a finite number", code="token_invalid")
    return number


def verify_device_token(
    token: str,
    *,
    device_id: str,
    public_key_pem: str,
    audience: str,
    now: float,
    leeway: float = LEEWAY_S,
    max_lifetime: float = MAX_LIFETIME_S,
) -> TokenClaims:
    """Verify `token` for `device_id` at time `now` (seconds); raises AuthError with a stable code.

    Algorithms are pinned to ES256, so neither `none` nor an HMAC keyed with the public key passes.
    Replay of the `jti` is checked separately by ReplayCache.
    """
    if not token or len(token) > _MAX_TOKEN_CHARS or not token.isascii():  # a JWS is base64url and dots
        raise AuthError("token missing, too long or not ASCII", code="token_invalid")
    key = load_device_public_key(public_key_pem)
    try:
        claims: dict[str, object] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            subject=device_id,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except (jwt.DecodeError, jwt.InvalidAlgorithmError) as exc:
        # Before the signature verified (InvalidSignatureError is a DecodeError): not this key's token, or no token.
        # The exception text names the failed check, never key material.
        raise AuthError(f"token rejected: {exc}", code="token_invalid") from exc
    except jwt.InvalidAudienceError as exc:
        raise SignedTokenError("token audience is wrong", code="token_audience") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise SignedTokenError(f"token lacks claim {exc.claim}", code="token_claims") from exc
    except jwt.InvalidTokenError as exc:  # a claim pyjwt checks (the subject), after the signature
        raise SignedTokenError(f"token rejected: {exc}", code="token_invalid") from exc
    iat = _number(claims, "iat")
    exp = _number(claims, "exp")
    if exp <= iat:
        raise SignedTokenError("token exp is not after iat", code="token_invalid")
    if exp - iat > max_lifetime:
        raise SignedTokenError(f"token lifetime over {max_lifetime:.0f} s", code="token_lifetime")
    if now > exp + leeway:
        raise SignedTokenError("token expired", code="token_expired")
    if iat > now + leeway:
        raise SignedTokenError("token issued in the future", code="token_not_yet_valid")
    if "nbf" in claims and _number(claims, "nbf") > now + leeway:
        raise SignedTokenError("token not yet valid", code="token_not_yet_valid")
    jti = claims["jti"]
    # Printable ASCII: the replay cache stores it, and PostgreSQL's text refuses a NUL (a connect refused as
    # if the store were down) and a lone surrogate cannot be encoded at all (an unhandled exception).
    if not isinstance(jti, str) or _JTI.fullmatch(jti) is None:
        raise SignedTokenError("claim jti must be 8-128 printable ASCII characters", code="token_claims")
    return TokenClaims(device_id=device_id, jti=jti, iat=iat, exp=exp)


class ReplayCache(Protocol):
    """Remembers each (device, jti) until its token expires, so a token opens one session only.

    Bounded per device, so that one device cannot fill it and lock the others out. Backends:
    `MemoryReplayCache` (one node) and `store.pg_replay.PgReplayCache` (shared by every node).
    """

    async def check_and_add(self, claims: TokenClaims, now: float) -> None:
        """Record the token; AuthError 'token_replayed' when seen before, 'too_many_tokens' when the
        device already holds `per_device` live tokens, 'token_cache_full' at the global bound."""


def replay_refusal(*, seen: bool, device_live: int, per_device: int) -> AuthError | None:
    """Why a token is refused, or None: the rule every backend applies (the replay check comes first)."""
    if seen:
        return AuthError("token jti was used before", code="token_replayed")
    if device_live >= per_device:
        return AuthError(
            f"this device holds {per_device} live tokens; connect again when the oldest expires",
            code="too_many_tokens",
        )
    return None


@dataclass(slots=True)
class MemoryReplayCache:
    """The ReplayCache in this process's memory: for the single-node store."""

    leeway: float = LEEWAY_S
    per_device: int = DEFAULT_TOKENS_PER_DEVICE
    max_entries: int = 200_000
    _seen: dict[tuple[str, str], float] = field(default_factory=dict)
    _by_expiry: list[tuple[float, tuple[str, str]]] = field(default_factory=list)
    _per_device: Counter[str] = field(default_factory=Counter)

    def add(self, claims: TokenClaims, now: float) -> None:
        """Record the token, or raise AuthError; see `ReplayCache.check_and_add`."""
        self._prune(now)
        key = (claims.device_id, claims.jti)
        refusal = replay_refusal(
            seen=key in self._seen, device_live=self._per_device[claims.device_id], per_device=self.per_device
        )
        if refusal is not None:
            raise refusal
        if len(self._seen) >= self.max_entries:
            raise AuthError("too many live tokens; try again later", code="token_cache_full")
        until = claims.exp + self.leeway
        self._seen[key] = until
        self._per_device[claims.device_id] += 1
        heapq.heappush(self._by_expiry, (until, key))

    async def check_and_add(self, claims: TokenClaims, now: float) -> None:
        """See `ReplayCache.check_and_add`."""
        self.add(claims, now)

    def __len__(self) -> int:
        return len(self._seen)

    def _prune(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] < now:
            _, key = heapq.heappop(self._by_expiry)
            if self._seen.pop(key, None) is not None:
                self._per_device[key[0]] -= 1
                if not self._per_device[key[0]]:
                    del self._per_device[key[0]]
