"""Signed documents of the offline paths (bundles, receipts, enrollment and key files).

A document is a body (bytes) and a JWS (RFC 7515) in compact form over it, with the payload detached
and unencoded (RFC 7797, `"b64": false`): ES256, made and checked by pyjwt, the library that already
signs device tokens, with the algorithm pinned on verification. The protected header names the
document type (`typ`) and the signer (`kid`), so a signature made for one kind of document never
passes as another, and a reader knows which key to check with before it trusts anything else.

On disk: msgpack `{"v": 1, "sig": <JWS>, "body": <bytes>}`, read with a size limit before anything
is parsed. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import jwt
import msgpack
from cryptography.exceptions import UnsupportedAlgorithm

from intent_contract.device_token import ALGORITHM
from intent_contract.errors import DecodeError, SignatureError
from intent_contract.msgpack_join import packb_joined

VERSION: Final = 1
_MAX_SIG = 4096  # a compact JWS with a short header and a P-256 signature is about 300 characters
_JWS = jwt.api_jws.PyJWS(algorithms=[ALGORITHM])


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A document as read from a file: not yet verified."""

    typ: str
    kid: str
    body: bytes
    signature: str


def sign(body: bytes, private_key_pem: bytes, *, typ: str, kid: str) -> bytes:
    """The signed document file for `body`, signed with an ES256 (P-256) private key."""
    signature = _JWS.encode(
        body,
        private_key_pem,
        algorithm=ALGORITHM,
        headers={"typ": typ, "kid": kid, "b64": False, "crit": ["b64"]},
        is_payload_detached=True,
    )
    return packb_joined({"v": VERSION, "sig": signature, "body": body})


def check_signing_key(private_key_pem: bytes) -> None:
    """DecodeError unless `sign` can sign with this key (a damaged file, another kind of key).

    The message never quotes the key.
    """
    try:
        _JWS.encode(b"", private_key_pem, algorithm=ALGORITHM, is_payload_detached=True)
    except (ValueError, TypeError, jwt.PyJWTError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"not a usable {ALGORITHM} private key ({type(exc).__name__})") from None


def read(data: bytes, *, typ: str, max_bytes: int) -> SignedDocument:
    """The document in `data`, of type `typ`; DecodeError when it is not one (nothing is verified here)."""
    document = _document(data, max_bytes)
    if document.typ != typ:
        raise DecodeError(f"expected a document of type {typ!r}, found {document.typ!r}", data)
    if not document.kid:
        raise DecodeError("the signature names no signer (kid)", data)
    return document


def peek_type(data: bytes, max_bytes: int) -> str | None:
    """The type a signed document in `data` names, nothing verified; None when `data` is no signed document. To
    say what a file given for another is (a receipt given to `cloud-bridge import`, a bundle to import-receipt)."""
    try:
        return _document(data, max_bytes).typ
    except DecodeError:
        return None


def _document(data: bytes, max_bytes: int) -> SignedDocument:
    if len(data) > max_bytes:
        raise DecodeError(f"file of {len(data)} bytes is over the {max_bytes}-byte limit", data)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=_MAX_SIG,
            max_bin_len=max_bytes,
            max_array_len=0,
            max_map_len=3,
            max_ext_len=0,
        )
    except ValueError as exc:
        raise DecodeError(f"not a signed document: {exc}", data, exc) from exc
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise DecodeError(f"not a signed document of version {VERSION}", data)
    signature, body = obj.get("sig"), obj.get("body")
    if not isinstance(signature, str) or not isinstance(body, bytes):
        raise DecodeError("a signed document needs a string sig and a bytes body", data)
    try:
        header = jwt.get_unverified_header(signature)
    except jwt.PyJWTError as exc:
        raise DecodeError(f"the signature is not a JWS: {exc}", data, exc) from exc
    typ, kid = header.get("typ"), header.get("kid")
    return SignedDocument(typ if isinstance(typ, str) else "", kid if isinstance(kid, str) else "", body, signature)


def verify(document: SignedDocument, public_key_pem: str | bytes) -> bytes:
    """The body, once its signature verifies with `public_key_pem`; SignatureError otherwise, also for a key that
    cannot be loaded. The key may come from the document itself (an enrollment request, a key rotation's next key):
    one pyjwt reads as an OpenSSH key of a type cryptography does not know (`ecdsa-sha2-x ...`), or a PEM key on an
    unknown curve, raised UnsupportedAlgorithm, which is no ValueError: `cloud-bridge devices enroll-offline`
    printed a traceback for such a request, and POST /v1/rotate-key answered 500."""
    try:
        _JWS.decode_complete(document.signature, public_key_pem, algorithms=[ALGORITHM], detached_payload=document.body)
    except (jwt.PyJWTError, ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"the {document.typ} signature does not verify: {exc!s:.200}") from exc
    return document.body
