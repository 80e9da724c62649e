"""Device JWT verification: every classic JWT attack is refused; a fresh, well-formed token passes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.errors import AuthError
from cloud_bridge.tokens import MemoryReplayCache, TokenClaims, load_device_public_key, verify_device_token
from intent_contract.device_token import generate_private_key_pem, public_key_pem, sign_device_token

NOW = 1_800_000_000
DEVICE = "01JDEVICE0000000000000000A"
AUD = "cloud-bridge"

PRIVATE = generate_private_key_pem()
PUBLIC = public_key_pem(PRIVATE)
OTHER_PRIVATE = generate_private_key_pem()


def _verify(token: str, *, now: float = NOW, public: str = PUBLIC, device: str = DEVICE) -> TokenClaims:
    return verify_device_token(token, device_id=device, public_key_pem=public, audience=AUD, now=now)


def _claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {"sub": DEVICE, "aud": AUD, "iat": NOW, "exp": NOW + 600, "jti": "jti-0123456789"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _code(token: str, **kw: object) -> str:
    with pytest.raises(AuthError) as info:
        _verify(token, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_valid_token_is_accepted() -> None:
    claims = _verify(sign_device_token(PRIVATE, DEVICE, NOW))
    assert claims.device_id == DEVICE
    assert claims.exp == NOW + 600


def test_alg_none_is_refused() -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    assert _code(f"{header}.{body}.") == "token_invalid"


def test_hs256_keyed_with_the_public_key_pem_is_refused() -> None:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims()).encode())
    signature = hmac.new(PUBLIC.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert _code(f"{header}.{body}.{_b64(signature)}") == "token_invalid"


def test_expired_token_is_refused_after_leeway() -> None:
    token = sign_device_token(PRIVATE, DEVICE, NOW, lifetime_s=60)
    _verify(token, now=NOW + 60 + 29)  # within the 30 s leeway
    assert _code(token, now=NOW + 60 + 31) == "token_expired"


def test_token_from_the_future_is_refused() -> None:
    token = sign_device_token(PRIVATE, DEVICE, NOW + 120)
    assert _code(token) == "token_not_yet_valid"


@pytest.mark.parametrize("missing", ["exp", "iat", "aud", "sub", "jti"])
def test_each_required_claim_is_required(missing: str) -> None:
    token = jwt.encode(_claims(**{missing: None}), PRIVATE, algorithm="ES256")
    assert _code(token) in {"token_claims", "token_audience"}


def test_wrong_audience_is_refused() -> None:
    token = sign_device_token(PRIVATE, DEVICE, NOW, audience="someone-else")
    assert _code(token) == "token_audience"


def test_another_devices_key_is_refused() -> None:
    token = sign_device_token(OTHER_PRIVATE, DEVICE, NOW)
    assert _code(token) == "token_invalid"


def test_subject_must_be_the_device() -> None:
    token = sign_device_token(PRIVATE, "01JOTHERDEVICE000000000000", NOW)
    assert _code(token) == "token_invalid"


def test_lifetime_over_one_hour_is_refused() -> None:
    token = jwt.encode(_claims(exp=NOW + 3601), PRIVATE, algorithm="ES256")
    assert _code(token) == "token_lifetime"


def test_non_numeric_times_are_refused() -> None:
    token = jwt.encode(_claims(iat="yesterday"), PRIVATE, algorithm="ES256")
    assert _code(token) == "token_invalid"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("nan")},  # compared false with everything: a token that never expired
        {"iat": float("nan"), "exp": NOW + 10 * 365 * 86400},
        {"exp": 10**400},  # past the float range: OverflowError, an unhandled exception at CONNECT
        {"iat": 10**400},
        {"nbf": 10**400},
        {"nbf": float("-inf")},
    ],
)
def test_time_claims_that_are_no_finite_number_are_refused(claims: dict[str, object]) -> None:
    token = jwt.encode(_claims(**claims), PRIVATE, algorithm="ES256")
    assert _code(token) == "token_invalid"


@pytest.mark.parametrize("jti", ["abc\x00defgh", "\ud800abcdefgh", "with space ok", "é" * 10, "short"])
def test_a_jti_must_be_printable_ascii(jti: str) -> None:
    """The replay cache stores it: PostgreSQL refused a NUL (as if the store were down) and a lone surrogate
    could not be encoded (an unhandled exception); SQLite took both."""
    token = jwt.encode(_claims(jti=jti), PRIVATE, algorithm="ES256")
    assert _code(token) == "token_claims"


def test_garbage_is_refused() -> None:
    assert _code("not-a-jwt") == "token_invalid"
    assert _code("") == "token_invalid"
    assert _code("a" * 10_000) == "token_invalid"


def test_public_key_must_be_p256() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    for key in (p384, rsa_key):
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        with pytest.raises(AuthError):
            load_device_public_key(pem)
    with pytest.raises(AuthError):
        load_device_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    load_device_public_key(PUBLIC)


def test_replay_cache_refuses_a_second_use_until_expiry() -> None:
    cache = MemoryReplayCache()
    claims = TokenClaims(device_id=DEVICE, jti="jti-0123456789", iat=NOW, exp=NOW + 60)
    cache.add(claims, NOW)
    with pytest.raises(AuthError) as info:
        cache.add(claims, NOW + 1)
    assert info.value.code == "token_replayed"
    # After expiry (plus leeway) the entry is pruned; the token itself is refused as expired by then.
    cache.add(TokenClaims(DEVICE, "another-jti-00", NOW + 100, NOW + 160), NOW + 100)
    assert len(cache) == 1


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 50)), max_size=60))
def test_replay_cache_accepts_each_live_jti_once(uses: list[tuple[str, int]]) -> None:
    cache = MemoryReplayCache(leeway=0)
    accepted: dict[str, float] = {}
    now = float(NOW)
    for jti, step in uses:
        now += step
        claims = TokenClaims(DEVICE, f"jti-{jti}-000000", now, now + 30)
        live = jti in accepted and accepted[jti] >= now
        try:
            cache.add(claims, now)
        except AuthError:
            assert live
        else:
            assert not live
            accepted[jti] = now + 30


@pytest.mark.parametrize("token", ["\udcff", "eyJhbGciOiJFUzI1NiJ9.\udcff.AA", "\u00e9.\u00e9.\u00e9"])
def test_a_token_that_is_not_ascii_is_invalid_not_an_encoding_error(token: str) -> None:
    with pytest.raises(AuthError) as refused:
        _verify(token)
    assert refused.value.code == "token_invalid"
