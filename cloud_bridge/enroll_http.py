"""The bridge's HTTPS API for devices: POST /v1/enroll, GET /v1/device, POST /v1/rotate-key (and /healthz).

Served with the same certificate as the MQTT listener, so a device pins one CA. Only moves bytes:
enroll_limits decides whether a request is served, the registry decides enrollment, atomically.
/metrics is not here: it has a listener of its own (ops_http).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler

from cloud_bridge.device_keys import accept_rotation, refuse_unknown, verify_with_device_key
from cloud_bridge.enroll_limits import EnrollGate, EnrollLimits
from cloud_bridge.errors import AuthError, KeyReplacedError, TransientError, UnknownDeviceError
from cloud_bridge.metrics import BridgeMetrics
from cloud_bridge.offline_keys import BridgePublicKeys
from cloud_bridge.ops_http import Ops, not_stored
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Device, Registry
from cloud_bridge.tokens import verify_device_token
from intent_contract import json_bounded
from intent_contract.errors import DecodeError
from intent_contract.logs import LogThrottle, left_out

logger = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024
_MAX_PEM = 4096
_NOT_VERIFIED = "the token does not verify for this device"
_STORE_DETAIL = "the bridge cannot use its store now; try again later (an enrollment: with the same code)"
_KEY_REPLACED_ROTATION = (
    "signed with a key of this device that a key rotation replaced (this identity is older than the device's:"
    " a restored backup or a copy of the data dir): put back the identity that rotated, or enroll again"
)
STORE_RETRY_AFTER = 30  # seconds, in a 503's Retry-After
STORE_LOG_INTERVAL = 10.0  # seconds between "not served: the store failed" lines
API_PATHS = frozenset({"/v1/enroll", "/v1/device", "/v1/rotate-key", "/healthz"})  # the dashboard's are its own


_EXPECTED = "expected a JSON object {code, public_key} of two strings (public_key: an SPKI PEM)"


def _malformed(document: object) -> str | None:
    """What is wrong with an enrollment request's JSON, for its answer; None when its fields are usable.

    Each fault is named: every one was told "expected string fields code and public_key", also a request of two
    strings whose key was a certificate chain (over the length), which read as if it had sent no strings."""
    if not isinstance(document, dict):
        return f"not a JSON object: {_EXPECTED}"
    for field in ("code", "public_key"):
        value = document.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"{field} is missing or empty: {_EXPECTED}"
        if not isinstance(value, str):
            return f"{field} is not a string: {_EXPECTED}"
    if len(document["public_key"]) > _MAX_PEM:
        return (
            f"public_key is over {_MAX_PEM} characters: expected the device's P-256 public key alone as an SPKI PEM"
            " (-----BEGIN PUBLIC KEY-----), not a certificate or a chain"
        )
    return None


def _error(status: int, code: str, detail: str, now: float | None = None) -> web.Response:
    body: dict[str, object] = {"error": code, "detail": detail}
    if now is not None:
        body["time"] = int(now * 1000)
    return web.json_response(body, status=status)


def _unauthorized(code: str, detail: str, now: float) -> web.Response:
    """A 401 of GET /v1/device, which names the scheme it takes (RFC 9110 requires it on a 401)."""
    response = _error(401, code, detail, now)
    response.headers["WWW-Authenticate"] = 'Bearer realm="cloud-bridge"'
    return response


def _subject(token: str) -> str | None:
    """The `sub` a token names, nothing verified; None when it is no JWT or names none.

    A token is ASCII (base64url and dots); a header byte that is not UTF-8 reaches us as a surrogate, on which
    PyJWT raised UnicodeEncodeError (a 500). Such a token is just not one."""
    if not token.isascii():
        return None
    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return subject if isinstance(subject, str) else None


def _bearer_token(authorization: str) -> str:
    """The token of an `Authorization: Bearer TOKEN` header, the scheme in any case (RFC 9110: `bearer TOKEN` was
    refused as a token that does not verify); a header of one word, as before, is taken as the token itself."""
    scheme, space, rest = authorization.strip().partition(" ")
    return rest.strip() if space and scheme.lower() == "bearer" else authorization.strip()


class Enrollment:
    """POST /v1/enroll: limited per source address and overall; the registry redeems the code atomically."""

    def __init__(
        self,
        registry: Registry,
        metrics: BridgeMetrics,
        *,
        mqtt_port: int,
        audience: str,
        clock: Callable[[], float],
        limits: EnrollLimits,
        offline: BridgePublicKeys | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._answer: dict[str, object] = {"mqtt_port": mqtt_port, "audience": audience}
        if offline is not None:  # the keys a device pins for bundles and receipts (docs/offline-sites.md)
            self._answer["offline"] = offline.to_json()
        self._clock = clock
        self._gate = EnrollGate(limits)
        self._log_refusal = LogThrottle()

    async def handle(self, request: web.Request) -> web.Response:
        wait = self._gate.admit(request.remote, self._clock())
        if wait is not None:
            retry = str(max(1, math.ceil(wait)))
            response = self._refuse(request, 429, "rate_limited", f"too many enrollment requests; retry in {retry} s")
            response.headers["Retry-After"] = retry
            return response
        try:
            document = json_bounded.loads(await request.read(), max_bytes=_MAX_BODY)
        except DecodeError as exc:
            return self._refuse(request, 400, "malformed", f"{exc}: {_EXPECTED}")
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, 400, "malformed", f"the body is over {_MAX_BODY} bytes: {_EXPECTED}")
        except web.RequestPayloadError:  # the body is not the Content-Encoding it claims (gzip that is not gzip)
            return self._refuse(request, 400, "malformed", "the body is not the Content-Encoding it names")
        wrong = _malformed(document)
        if wrong is not None:
            return self._refuse(request, 400, "malformed", wrong)
        try:
            # A code has no whitespace (token_urlsafe): what is around it was pasted with it (a chat, a mail, a file).
            return await self._redeem(request, document["code"].strip()[:200], document["public_key"])
        except TransientError:  # answered 503 by the app's middleware; an attempt all the same
            self._metrics.enrollments.labels("unavailable").inc()
            raise

    async def _redeem(self, request: web.Request, code: str, public_key: str) -> web.Response:
        try:
            device = await own_thread(self._registry.redeem, code, public_key, self._clock())
        except AuthError as exc:
            if exc.code == "bad_public_key":
                return self._refuse(request, 400, exc.code, exc.detail)
            # The request that spent this code, made again with the same key: its answer was lost (a cut
            # link, a timeout) and the device, which holds that key, asks again. Answered as before, else
            # the site could not enroll without a new code and the bridge kept a device nobody could use.
            again = await own_thread(self._registry.redeemed, code, public_key)
            if again is None:
                return self._refuse(request, 403, "enroll_refused", "enrollment code unknown, used or expired")
            self._metrics.enrollments.labels("repeated").inc()
            logger.info("enrollment answered again", extra={"device_id": again.device_id, "tenant": again.tenant})
            return self._enrolled(again)
        self._metrics.enrollments.labels("enrolled").inc()
        logger.info("device enrolled", extra={"device_id": device.device_id, "tenant": device.tenant})
        return self._enrolled(device)

    def _enrolled(self, device: Device) -> web.Response:
        body = {
            "device_id": device.device_id,
            "tenant": device.tenant,
            "name": device.name,
            **self._answer,
            "time": int(self._clock() * 1000),  # the bridge's clock, for a device whose own is wrong
        }
        return web.json_response(body, status=201)

    def _refuse(self, request: web.Request, status: int, code: str, detail: str) -> web.Response:
        """The error answer; counted, and logged with reason and client at most once a second."""
        self._metrics.enrollments.labels({429: "limited", 400: "malformed"}.get(status, "refused")).inc()
        not_logged = self._log_refusal.allow(self._clock())
        if not_logged is not None:
            more = f" (and {not_logged} refusals not logged since the last line)" if not_logged else ""
            logger.warning(
                "enrollment refused from %s: %s%s", request.remote, code, more,
                extra={"client": request.remote, "code": code, "not_logged": not_logged},
            )  # fmt: skip
        return _error(status, code, detail)


def _device_answer(device: Device, now: float, offline: BridgePublicKeys | None) -> dict[str, object]:
    """`GET /v1/device`'s answer to the device itself: with the offline keys enrollment gives, which a device
    enrolled before they existed pins from here (edge_outbox.pins_learn)."""
    status = "revoked" if device.revoked_at is not None else "active"
    answer: dict[str, object] = {"device_id": device.device_id, "status": status, "time": int(now * 1000)}
    if offline is not None:
        answer["offline"] = offline.to_json()
    return answer


def build_http_app(
    registry: Registry,
    metrics: BridgeMetrics,
    *,
    mqtt_port: int,
    audience: str,
    clock: Callable[[], float] = time.time,
    enroll_limits: EnrollLimits | None = None,
    offline: BridgePublicKeys | None = None,
    ops: Ops | None = None,
) -> web.Application:
    """The aiohttp application; the caller runs it."""

    enrollment = Enrollment(
        registry,
        metrics,
        mqtt_port=mqtt_port,
        audience=audience,
        clock=clock,
        limits=enroll_limits or EnrollLimits(),
        offline=offline,
    )

    async def device_status(request: web.Request) -> web.Response:
        """A device asks, with a token signed by its own key, whether it is still enrolled.

        Answered for revoked devices too, so that an edge whose connects are refused can tell
        "revoked" (end its backlog with a clear status) from a passing fault (keep retrying).
        """
        token = _bearer_token(request.headers.get("Authorization", ""))
        subject = _subject(token)
        device = await own_thread(registry.get, subject) if subject is not None else None
        # An unknown device gets the answer a bad signature gets, after the same work, so a forger cannot probe
        # for ids. Other codes come only after the signature verified: that caller holds the device's key.
        # Every answer carries the bridge's time: a device refused for a token made with a wrong clock
        # (token_expired, token_not_yet_valid) learns from it how far off it is.
        now = clock()

        def verify(key: str) -> object:
            return verify_device_token(token, device_id=str(subject), public_key_pem=key, audience=audience, now=now)

        if device is None:
            if subject is not None:
                with contextlib.suppress(UnknownDeviceError):
                    await own_thread(refuse_unknown, registry, subject, verify)
            return _unauthorized("token_invalid", _NOT_VERIFIED, now)

        try:
            await own_thread(verify_with_device_key, registry, device, verify, clock)
        except KeyReplacedError:  # the caller holds the old key: it learns what the device knew
            return _unauthorized("key_replaced", "signed with a key of this device that a key rotation replaced", now)
        except AuthError as exc:
            return _unauthorized(exc.code, _NOT_VERIFIED, now)
        return web.json_response(_device_answer(device, now, offline))

    async def rotate_key(request: web.Request) -> web.Response:
        """POST /v1/rotate-key: a rotation document (device_keys); the next key counts from its first use."""
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(400, "malformed", "rotation document too large")
        except web.RequestPayloadError:  # not the Content-Encoding it claims
            return _error(400, "malformed", "the body could not be read (its Content-Encoding)")
        try:
            device = await own_thread(accept_rotation, registry, data, clock())
        except (AuthError, UnknownDeviceError) as exc:
            if exc.code == "rotation_malformed":
                return _error(400, exc.code, exc.detail, clock())
            if isinstance(exc, KeyReplacedError):  # the caller holds the old key: it learns what the device knew
                return _error(403, exc.code, _KEY_REPLACED_ROTATION, clock())
            if exc.code == "device_revoked":  # only after the device's key verified: that caller holds it
                detail = "this device is revoked at the bridge: it cannot rotate its key (enroll again with a new code)"
                return _error(403, exc.code, detail, clock())
            # Unknown devices and bad signatures answer alike: nobody learns which ids exist or are revoked.
            return _error(403, "rotation_refused", "the rotation does not verify for this device", clock())
        logger.info("device proposed its next key", extra={"device_id": device.device_id})
        return web.json_response({"device_id": device.device_id, "next_key": "accepted", "time": int(clock() * 1000)})

    store_logs = LogThrottle(STORE_LOG_INTERVAL)

    @web.middleware
    async def store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
        """A store that fails (a full disk, a database down) is 503 with a JSON answer: it was 500 text/plain, and
        aiohttp's traceback at ERROR for each request; `edge-outbox enroll` said its code was refused."""
        try:
            return await handler(request)
        except TransientError as exc:
            not_logged = store_logs.allow(time.monotonic())
            if not_logged is not None:  # the code, not the message: it names the store's files or address
                logger.error("%s %s not served: the store failed (%s)%s", request.method, request.path, exc.code,
                             left_out(not_logged), extra={"code": exc.code, "not_logged": not_logged})  # fmt: skip
            response = _error(503, "store_unavailable", _STORE_DETAIL, clock())
            response.headers["Retry-After"] = str(STORE_RETRY_AFTER)
            return response

    app = web.Application(client_max_size=_MAX_BODY, middlewares=[store_unavailable])
    app.on_response_prepare.append(not_stored(API_PATHS))
    app.add_routes(
        [
            web.post("/v1/enroll", enrollment.handle),
            web.get("/v1/device", device_status),
            web.post("/v1/rotate-key", rotate_key),
        ]
    )
    if ops is not None:
        app.router.add_get("/healthz", ops.healthz)
    return app
