"""Enrollment from the edge: make the device key here, register its public half with the bridge over
HTTPS (verified against the CA given, which is then pinned), keep the identity, and learn the
bridge's clock from its answer. A TLS refusal is explained with its real reason. The key is kept for its
code until the answer is (identity/enroll.pending): an answer lost is asked for again with the same key."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
from pathlib import Path

import httpx

from edge_outbox import db, offline_ops
from edge_outbox.bridge_access import ANSWER_LIMIT
from edge_outbox.bridge_clock import TimeSample
from edge_outbox.bridge_pins import BridgePins
from edge_outbox.errors import ConfigError, PermanentError, TransientError
from edge_outbox.identity import Identity, identity_dir, load_identity, save_identity
from intent_contract import json_bounded
from intent_contract.bridge_url import bridge_url_host
from intent_contract.device_token import generate_private_key_pem, is_private_key, public_key_pem
from intent_contract.errors import DecodeError
from intent_contract.files import write_atomic

ENROLL_PENDING = "enroll.pending"  # the key made for a code, until the bridge's answer is kept


def enroll(data_dir: Path, bridge_url: str, code: str, ca: Path) -> Identity:
    """Make a key here, register its public half with the bridge, and keep the identity on disk."""
    existing = load_identity(data_dir)
    if existing is not None:
        raise PermanentError(
            f"already enrolled as device {existing.device_id} with {existing.http_url}; to enroll again, "
            f"move {identity_dir(data_dir)} away first (the bridge can revoke the old device)"
        )
    try:
        host = bridge_url_host(bridge_url)
    except ValueError as exc:
        raise ConfigError(f"--bridge {exc} (the bridge's enrollment address)") from None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ca {ca}: not a readable PEM CA certificate ({exc})") from None
    # The bridge takes a code with whitespace around it (pasted from a mail or a chat): the key is kept for the code
    # without it, or the same code typed again without it after a lost answer made a new key, refused (403).
    code = code.strip()
    key_pem = _key_for_code(data_dir, code)
    url = bridge_url.rstrip("/") + "/v1/enroll"
    sent = _local_ms()
    try:
        response = httpx.post(
            url,
            json={"code": code, "public_key": public_key_pem(key_pem)},
            verify=context,
            timeout=30,
            follow_redirects=False,
        )
    except httpx.ConnectError as exc:
        refusal = _certificate_refusal(exc, bridge_url, ca)
        if refusal is not None:
            raise PermanentError(refusal) from None
        raise TransientError(f"cannot reach the bridge at {bridge_url}: {exc}") from None
    except httpx.HTTPError as exc:
        # The bridge may have enrolled this key and its answer been lost: the same code with the same key
        # (kept in identity/) is answered again.
        raise TransientError(
            f"enrollment request to {bridge_url} failed: {exc}; run it again with the same code"
        ) from None
    received = _local_ms()
    try:
        body = json_bounded.loads(response.content, max_bytes=ANSWER_LIMIT)
    except DecodeError as exc:
        body = None
        if response.status_code == 201:
            raise PermanentError(f"the bridge's enrollment answer is not usable JSON: {exc}") from None
    if response.status_code != 201:
        reason = body.get("detail", "") if isinstance(body, dict) else response.reason_phrase
        if response.status_code == 429 or response.status_code >= 500:  # busy, or its store failing: not a refusal
            raise TransientError(
                f"the bridge could not enroll now (HTTP {response.status_code}): {reason}; run it again with the"
                " same code"
            )
        raise PermanentError(f"the bridge refused enrollment (HTTP {response.status_code}): {reason}")
    identity = _identity_in(body, host, bridge_url.rstrip("/"))
    pins = BridgePins.from_json(body["offline"]) if "offline" in body else None
    save_identity(data_dir, identity, key_pem, ca, pins)
    (identity_dir(data_dir) / ENROLL_PENDING).unlink(missing_ok=True)
    adopt_identity_at(data_dir, identity.device_id, _local_ms())
    if type(body.get("time")) is int:
        learn_time_at(data_dir, TimeSample.between(body["time"], sent, received, "enrollment"), received)
    return identity


def _identity_in(body: object, host: str, http_url: str) -> Identity:
    """The identity a 201 answer gives; PermanentError naming what it lacks (a KeyError traceback before)."""
    if not isinstance(body, dict):
        raise PermanentError("the bridge's enrollment answer is not a JSON object")
    for field in ("device_id", "tenant", "name", "audience"):
        if not isinstance(body.get(field), str):
            said = "lacks" if field not in body else "has no text in"
            raise PermanentError(f"the bridge's enrollment answer {said} {field}")
    port = body.get("mqtt_port")
    if type(port) is not int or not 0 < port < 65536:
        said = "lacks" if port is None else "has no port number in"
        raise PermanentError(f"the bridge's enrollment answer {said} mqtt_port")
    return Identity(body["device_id"], body["tenant"], body["name"], host, port, http_url, body["audience"])


def _key_for_code(data_dir: Path, code: str) -> bytes:
    """The key made for `code` by an earlier run whose answer never came, else a new one, kept for this code.

    Kept (written whole, mode 0600) before the request goes: the bridge may enroll it and the answer be
    lost, and only the same code with the same key is answered again. A key made for another code is not
    reused: the bridge may hold it as a device revoked since, which no code enrolls again.
    """
    directory = identity_dir(data_dir)
    path = directory / ENROLL_PENDING
    digest = hashlib.sha256(code.encode()).hexdigest()
    try:
        pending = json_bounded.loads(path.read_bytes(), max_bytes=ANSWER_LIMIT) if path.exists() else None
    except (OSError, DecodeError):
        pending = None  # cut short or damaged: nothing this device can sign with, so a new key
    if isinstance(pending, dict) and pending.get("code_sha256") == digest:
        key = str(pending.get("key", "")).encode()
        if is_private_key(key):
            return key
    key = generate_private_key_pem()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        write_atomic(path, json.dumps({"code_sha256": digest, "key": key.decode()}).encode(), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot keep the enrollment key in {directory}: {exc.strerror or exc}") from None
    return key


def _local_ms() -> int:
    return time.time_ns() // 1_000_000


def learn_time_at(data_dir: Path, sample: TimeSample, now: int) -> None:
    """Keep what an answer of the bridge proves about its clock in the outbox database (made if need be)."""
    conn = db.connect(data_dir)
    try:
        offline_ops.learn_time(conn, sample, now)
    finally:
        conn.close()


def adopt_identity_at(data_dir: Path, device_id: str, now: int) -> int:
    """Tell the outbox database (made if need be) that this data dir is now device `device_id`; how many
    intents sent as the device it was before ended (`offline_ops.adopt_identity`)."""
    conn = db.connect(data_dir)
    try:
        return offline_ops.adopt_identity(conn, device_id, now)
    finally:
        conn.close()


# OpenSSL verify codes meaning "no chain to a CA we trust"; anything else failed on a chain that was
# fine (a host name the certificate does not name, an expired certificate, ...).
_NO_CHAIN_TO_CA = frozenset({2, 18, 19, 20, 21})


def _certificate_refusal(exc: BaseException, bridge_url: str, ca: Path) -> str | None:
    """Why TLS refused the bridge's certificate, in words that name the real reason; None if it did not."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    reason = str(cause.verify_message).rstrip(".")
    if cause.verify_code in _NO_CHAIN_TO_CA:
        return f"the bridge at {bridge_url} has a certificate not signed by the pinned CA {ca} ({reason})"
    hint = ""
    if cause.verify_code in (62, 64):  # host name / IP address mismatch
        hint = "; give --bridge the host name the certificate was issued for"
    return f"the bridge at {bridge_url} has a certificate signed by the pinned CA {ca} but refused: {reason}{hint}"
