"""The bridge's HTTPS endpoint: POST /v1/enroll, GET /healthz, GET /metrics (Prometheus text).

Served with the same certificate as the MQTT listener, so a device pins one CA. Only moves bytes:
the registry decides enrollment, atomically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from cloud_bridge.errors import AuthError, BridgeError
from cloud_bridge.registry import Registry
from cloud_bridge.settings import HostPort
from cloud_bridge.tokens import verify_device_token

logger = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024
_MAX_PEM = 4096


class BridgeMetrics:
    """The bridge's Prometheus metrics, in a registry of their own (several bridges can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.enrollments = Counter(
            "bridge_enrollments", "Enrollment requests by result", ["result"], registry=self.registry
        )
        self.connects_refused = Counter(
            "bridge_connects_refused", "MQTT connects refused, by code", ["code"], registry=self.registry
        )
        self.batches = Counter("bridge_batches", "Intent batches by outcome", ["outcome"], registry=self.registry)
        self.acks = Counter("bridge_acks", "Acks sent to devices, by state", ["state"], registry=self.registry)
        self.devices = Gauge("bridge_devices", "Enrolled devices by status", ["status"], registry=self.registry)
        self.connected = Gauge("bridge_connected_devices", "Devices with a live session", registry=self.registry)


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS server context for the listeners (TLS 1.2+)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise BridgeError(f"cannot load TLS certificate {cert} / key {key}: {exc}", code="tls_config") from exc
    return context


def build_http_app(
    registry: Registry,
    metrics: BridgeMetrics,
    *,
    mqtt_port: int,
    audience: str,
    clock: Callable[[], float] = time.time,
    connected: Callable[[], int] = lambda: 0,
) -> web.Application:
    """The aiohttp application; the caller runs it."""

    async def enroll(request: web.Request) -> web.Response:
        try:
            document = json.loads(await request.read())
        except (ValueError, web.HTTPRequestEntityTooLarge):
            metrics.enrollments.labels("malformed").inc()
            return _error(400, "malformed", "expected a JSON object {code, public_key}")
        code = document.get("code") if isinstance(document, dict) else None
        public_key = document.get("public_key") if isinstance(document, dict) else None
        if not isinstance(code, str) or not isinstance(public_key, str) or not code or len(public_key) > _MAX_PEM:
            metrics.enrollments.labels("malformed").inc()
            return _error(400, "malformed", "expected string fields code and public_key (SPKI PEM)")
        try:
            device = await asyncio.to_thread(registry.redeem, code[:200], public_key, clock())
        except AuthError as exc:
            if exc.code == "bad_public_key":
                metrics.enrollments.labels("malformed").inc()
                return _error(400, exc.code, exc.detail)
            metrics.enrollments.labels("refused").inc()
            logger.warning("enrollment refused", extra={"code": exc.code})
            return _error(403, "enroll_refused", "enrollment code unknown, used or expired")
        metrics.enrollments.labels("enrolled").inc()
        logger.info("device enrolled", extra={"device_id": device.device_id, "tenant": device.tenant})
        return web.json_response(
            {
                "device_id": device.device_id,
                "tenant": device.tenant,
                "name": device.name,
                "mqtt_port": mqtt_port,
                "audience": audience,
            },
            status=201,
        )

    async def device_status(request: web.Request) -> web.Response:
        """A device asks, with a token signed by its own key, whether it is still enrolled.

        Answered for revoked devices too, so that an edge whose connects are refused can tell
        "revoked" (end its backlog with a clear status) from a passing fault (keep retrying).
        """
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        try:
            subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.PyJWTError:
            subject = None
        device = await asyncio.to_thread(registry.get, subject) if isinstance(subject, str) else None
        if device is None:
            return _error(401, "unknown_device", "no such device, or a malformed token")
        try:
            verify_device_token(
                token, device_id=device.device_id, public_key_pem=device.public_key, audience=audience, now=clock()
            )
        except AuthError as exc:
            return _error(401, exc.code, "the token does not verify for this device")
        status = "revoked" if device.revoked_at is not None else "active"
        return web.json_response({"device_id": device.device_id, "status": status})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_page(_: web.Request) -> web.Response:
        try:
            counts = await asyncio.to_thread(registry.counts)
        except BridgeError:
            counts = {}
        for status, value in counts.items():
            metrics.devices.labels(status).set(value)
        metrics.connected.set(connected())
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_get("/v1/device", device_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


class HttpServer:
    """Runs the app on HOST:PORT with TLS."""

    def __init__(self, app: web.Application, bind: HostPort, context: ssl.SSLContext) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._bind = bind
        self._context = context

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind.host, self._bind.port, ssl_context=self._context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise BridgeError(f"cannot listen on {self._bind}: {exc.strerror or exc}", code="listen_failed") from exc

    async def stop(self) -> None:
        await self._runner.cleanup()
