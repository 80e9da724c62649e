"""One bridge node, composed: store, policy, executor, integrations, the MQTT and HTTPS listeners,
the metrics listener and the control socket; and the reload of its config.

A reload (SIGHUP, `cloud-bridge reload`) reads the config file again and checks all of it before
anything changes; a file with a problem is refused with every problem named, and the running config
stays in force. Then the integrations (the vendor's and each tenant's own) are built anew and swapped
in for new jobs (running jobs end on the integration they started with, which is closed after its
last job), with the tenants' shares, the policy for new admissions, and the dashboard's operators and
session key. `[bridge]` keys, turning the dashboard on or off, and the command line's flags take a
restart: a reload that changes them is refused. Each node reloads on its own signal or socket.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from cloud_bridge.cancel_asks import CancelAsks
from cloud_bridge.cert_info import CertInfo, valid_cert
from cloud_bridge.control import MAX_ERROR_CHARS, ControlServer
from cloud_bridge.dashboard.auth import OperatorAuth
from cloud_bridge.dashboard.store_data import StoreData
from cloud_bridge.dashboard.views import Dashboard
from cloud_bridge.device_gate import DeviceGate
from cloud_bridge.enroll_http import build_http_app
from cloud_bridge.errors import BridgeError, ConfigError
from cloud_bridge.executor import Executor
from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.http_server import METRICS_CONNECTIONS, HttpServer, server_ssl_context
from cloud_bridge.integrations import build_integrations, build_tenant_integrations
from cloud_bridge.integrations.base import Integration
from cloud_bridge.ledger import Ledger
from cloud_bridge.listen_check import check_port_free
from cloud_bridge.listener import BridgeListener
from cloud_bridge.metrics import BridgeMetrics
from cloud_bridge.node_lock import NodeLock, mark_shared_store
from cloud_bridge.offline_keys import load_for_store
from cloud_bridge.ops_http import Ops
from cloud_bridge.own_threads import own_thread
from cloud_bridge.refusals import ConnectAudit
from cloud_bridge.registry import Registry
from cloud_bridge.reload_guard import Serving, dropped, every_integration, refuse_stranding, without_policy
from cloud_bridge.retention import Retention
from cloud_bridge.revocations import settle_results
from cloud_bridge.service import BridgeService
from cloud_bridge.settings import BridgeSettings
from cloud_bridge.store import open_store
from cloud_bridge.tenant_pools import SHARED_ORPHAN_GRACE
from intent_contract.logs import clip

logger = logging.getLogger(__name__)

LoadSettings = Callable[[], BridgeSettings]
Owned = dict[str, Integration]  # a tenant's own integrations, by kind


def restart_only_changes(running: BridgeSettings, new: BridgeSettings) -> list[str]:
    """What differs between two settings that a reload cannot apply: `[bridge]` keys and the flags."""
    before = running.config.bridge.model_dump()
    changed = [f"bridge.{key}" for key, value in new.config.bridge.model_dump().items() if before[key] != value]
    flags = ("data_dir", "listen", "http_listen", "ws_listen", "metrics_listen", "tls_cert", "tls_key", "store")
    changed += [f"--{f.replace('_', '-')}" for f in flags if getattr(running, f) != getattr(new, f)]
    if running.config.dashboard.enabled != new.config.dashboard.enabled:  # its pages are mounted at start, or not
        changed.append("[dashboard]")
    return changed


def _server_tls(settings: BridgeSettings) -> ssl.SSLContext:
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key are required (try `cloud-bridge dev-certs DIR`)")
    return server_ssl_context(settings.tls_cert, settings.tls_key)


class Bridge:
    """The whole cloud bridge in one process: registry, ledger, policy, executor, the listeners."""

    def __init__(
        self,
        settings: BridgeSettings,
        *,
        integrations: Mapping[str, Integration] | None = None,
        clock: Callable[[], float] = time.time,
        load: LoadSettings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics(process=True)
        per_device = settings.tokens_per_device
        self.store = open_store(
            settings.store_url,
            node=settings.node_id,
            tokens_per_device=per_device,
            timeout=settings.store_timeout,
            clock=clock,
        )
        self.registry: Registry = self.store.registry
        self.ledger: Ledger = self.store.ledger
        self.metrics.count_commits(lambda: self.ledger.commits)
        self._clock = clock
        self._given_integrations = integrations
        self._load = load
        self.integrations: Mapping[str, Integration] = {}
        self.tenant_integrations: Mapping[str, Mapping[str, Integration]] = {}
        self.service: BridgeService | None = None
        self.listener: BridgeListener | None = None
        self._executor: Executor | None = None
        self._asks: CancelAsks | None = None
        self._servers: list[HttpServer] = []
        self._control: ControlServer | None = None
        self._reload_lock = asyncio.Lock()
        self._stopping = False  # a reload from then on is refused; one under way ends before the stop goes on
        self._ops: Ops | None = None  # /healthz and /metrics (set at start)
        self.generation = 1  # the config in force: 1 at start, one more for each reload applied
        self.certificate: CertInfo | None = None  # what the last reload loaded (cloud_bridge.cert_info)
        self._opened = False
        self.fleet_desk: FleetDesk | None = None
        self._refusals: ConnectAudit | None = None
        self.retention: Retention | None = None
        self._dashboard: Dashboard | None = None
        self._lock: NodeLock | None = None  # a SQLite store's: one node per data directory
        self._own_session_key = secrets.token_bytes(32)  # the dashboard's, when the config gives none

    def _integrations_of(self, settings: BridgeSettings) -> tuple[dict[str, Integration], dict[str, Owned]]:
        """The vendor's integrations by kind, and the tenants' own by tenant, then kind."""
        own = build_tenant_integrations(settings.config.tenants)
        if self._given_integrations is not None:
            return dict(self._given_integrations), own
        return build_integrations(settings.config.integrations), own

    def _cancel_asks(self, node_id: str) -> CancelAsks:
        """The node's answers to operators' cancels of the rows its executor holds (made once)."""
        if self._asks is None:
            self._asks = CancelAsks(self.store.intents, node_id, self._clock, held=lambda: self._executor)
        return self._asks

    async def start(self) -> None:
        """Open the stores and bind every listener; BridgeError (one line) on any problem."""
        settings = self.settings
        context = _server_tls(settings)
        check_port_free(settings.listen, "--listen")
        check_port_free(settings.http_listen, "--http-listen")
        if settings.ws_listen is not None:
            check_port_free(settings.ws_listen, "--ws-listen")
        if settings.metrics_listen is not None:
            check_port_free(settings.metrics_listen, "--metrics-listen")
        if not settings.configured:
            logger.warning("no config file (or an empty one): no integration enabled, every intent is rejected")
        policy = settings.config.policy()
        self.integrations, self.tenant_integrations = self._integrations_of(settings)
        logger.info("integrations enabled: %s", ", ".join(sorted(self.integrations)) or "none")
        await self._open_store()
        desk = self.fleet_desk = FleetDesk(
            self.store.fleet,
            node=settings.node_id,
            devices=self.registry.all_devices,
            metrics=self.metrics.registry,
            clock=self._clock,
        )
        service = self.service = BridgeService(
            ledger=self.ledger,
            policy=policy,
            registry=self.registry,
            metrics=self.metrics,
            clock=self._clock,
            max_intent_age=settings.max_intent_age,
            on_intents=desk.intents,
        )
        executor = self._executor = Executor(
            self.ledger,
            self.integrations,
            max_attempts=settings.max_attempts,
            retry_base=settings.retry_base,
            retry_cap=settings.retry_cap,
            max_rate_limited=settings.max_rate_limited,
            on_final=service.on_final,
            now=self._clock,
            revoked=self._revoked,
            owner=settings.node_id,
            lease=settings.lease,
            observe=self.metrics.observe,
            tenants=self.tenant_integrations,
            shares=settings.config.shares(),
            orphan_grace=SHARED_ORPHAN_GRACE if self.store.url.shared else 0.0,
            on_asked=self._cancel_asks(settings.node_id).claimed,
        )
        self._refusals = ConnectAudit(desk, self.ledger, self._tenant_of)  # audits refused connects, then the desk
        gate = DeviceGate(
            self.registry,
            settings.audience,
            replay=self.store.replay,
            clock=self._clock,
            on_refused=lambda code: self.metrics.connects_refused.labels(code).inc(),
            telemetry=self._refusals,
        )
        listener = self.listener = BridgeListener(
            settings,
            self.registry,
            gate,
            service,
            reports=desk,
            watch=self.metrics,
            on_topic_refused=lambda action: self.metrics.topics_refused.labels(action).inc(),
            # SQLite: the registry's revocation cannot settle the ledger's rows (another file); the watcher does
            settle=None if self.store.url.shared else settle_results(self.ledger),
        )
        slots = executor if self.ledger.claims_at_admission else None
        service.attach(listener.publish, executor.wake, listener.holds, slots=slots, revoked=self._revoked)
        desk.attach(listener.send, listener.connected, listener.subscribed)
        ops = self._ops = Ops(
            self.metrics, self.ledger, self.registry, connected=lambda: len(listener.connected()), clock=self._clock
        )
        app = build_http_app(
            self.registry,
            self.metrics,
            mqtt_port=settings.public_mqtt_port,
            audience=settings.audience,
            clock=self._clock,
            enroll_limits=settings.enroll_limits,
            offline=(await own_thread(load_for_store, settings.data_dir, self.registry.offline_key_id)).public,
            ops=ops,
        )
        dashboard_config = settings.config.dashboard
        if dashboard_config.enabled:
            if settings.store_url.shared and dashboard_config.secret("session_key") is None:
                # Each node then signs with a key of its own: behind a load balancer, every request that reaches
                # another node than the login's is sent back to the login page, and its forms are refused.
                logger.warning(
                    "[dashboard] has no session key: this node signs sessions with a key made at start, which no"
                    " other node sharing this store accepts; give every node the same session_key_env or"
                    " session_key_file (docs/dashboard.md)"
                )
            auth = self._operator_auth(settings)
            data = StoreData(
                self.registry, self.store.fleet, self._clock, ledger=self.ledger, intents=self.store.intents
            )
            dashboard = self._dashboard = Dashboard(data, auth, clock=self._clock)
            dashboard.mount(app)
        self._servers.append(self._https_server(app, context))
        if settings.metrics_listen is not None:
            self._servers.append(
                HttpServer(ops.app(), settings.metrics_listen, None, "--metrics-listen", name="metrics",
                           limits=METRICS_CONNECTIONS, watch=self.metrics)
            )  # fmt: skip
        for server in self._servers:
            await server.start()
        await listener.start()
        await desk.start()
        await executor.start()
        await self.store.signals.start(service.on_results, executor.wake, self._cancel_asks(settings.node_id).look)
        bridge = settings.config.bridge
        self.retention = Retention(
            self.store.intents, intent_age=bridge.intent_retention, audit_age=bridge.audit_retention,
            max_intent_age=bridge.max_intent_age,
        )  # fmt: skip
        self.retention.start()
        if self._load is not None:
            self._control = ControlServer(settings.data_dir, {"reload": self._reload_answer})
            if not await self._control.start():
                self._control = None
        logger.info("bridge node %s running: %s, store %s", settings.node_id, settings.listening(), settings.store_url)

    async def _open_store(self) -> None:
        """Open the store; a SQLite one under its data directory's lock (node_lock), taken before the executor's
        start takes back the rows left running. Warn of enrolled tenants the config has no table for."""
        if not self.store.url.shared:
            self._lock = NodeLock(self.store.url.directory)
            self._lock.acquire(self.settings.node_id)
        else:
            mark_shared_store(self.settings.data_dir, str(self.store.url))
        await self.store.open()
        self._opened = True
        if self.settings.configured:  # (without a config, a warning says every intent is rejected)
            devices = await own_thread(self.registry.all_devices)
            if unpolicied := without_policy(self.settings.config.tenants, devices):
                logger.warning("%s", unpolicied, extra={"code": "tenant_without_policy"})

    async def reload(self) -> list[str]:
        """Read the config again and apply it; returns the integrations now enabled.

        ConfigError (every problem named) when the new config cannot be applied: nothing changed then.
        """
        if self._load is None or self.service is None or self._executor is None:
            raise ConfigError("this bridge was not started with a config it can read again")
        async with self._reload_lock:
            if self._stopping:
                raise ConfigError("the bridge is stopping: nothing was reloaded")
            try:
                new = await own_thread(self._load)  # the file and the secret files: blocking reads
                changed = restart_only_changes(self.settings, new)
                if changed:
                    raise ConfigError(f"{', '.join(changed)} changed, which takes a restart")
                # The certificate and key read again (a renewal keeps their paths); a pair that does not load
                # is refused here, and the running one stays.
                tls = await own_thread(_server_tls, new)
                assert new.tls_cert is not None  # _server_tls refused a config without one
                certificate = await own_thread(valid_cert, new.tls_cert, self._clock())
                auth = self._operator_auth(new)
                policy = new.config.policy()
                # Off the event loop: each client builds its TLS context (about 28 ms each, 2.8 s for 50 tenants with
                # their own http and smtp), and every device, health check and ack waited for all of them.
                integrations, tenant_integrations = await own_thread(self._integrations_of, new)
                await self._refuse_stranding(new, integrations, tenant_integrations)
            except BridgeError as exc:
                self.metrics.reloads.labels("refused").inc()
                logger.error("config reload refused, the running config stays in force: %s", exc.detail,
                             extra={"code": "reload_refused"})  # fmt: skip
                raise
            self.service.use_policy(policy)
            self._executor.use(integrations, tenant_integrations, new.config.shares())
            if self.listener is not None:
                self.listener.use_tls(tls)
            for server in self._servers:
                server.use_tls(tls)
            if self._dashboard is not None:
                self._dashboard.use_auth(auth)
            self.settings, self.integrations, self.certificate = new, integrations, certificate
            self.tenant_integrations = tenant_integrations
            self.generation += 1
            self.metrics.reloads.labels("applied").inc()
            own = "; ".join(f"{t}: {', '.join(sorted(k))}" for t, k in sorted(tenant_integrations.items()))
            logger.info("config reloaded (generation %d): integrations %s; tenants' own %s; %s", self.generation,
                        ", ".join(sorted(integrations)) or "none", own or "none", certificate.line(),
                        extra={"code": "reloaded"})  # fmt: skip
            return sorted(integrations)

    def _operator_auth(self, settings: BridgeSettings) -> OperatorAuth:
        """The dashboard's operators and session key as `settings` give them (the node's own key when none)."""
        config = settings.config.dashboard
        return OperatorAuth(config.operators, config.key_bytes() or self._own_session_key)

    async def _refuse_stranding(
        self, settings: BridgeSettings, integrations: Mapping[str, Integration], own: Mapping[str, Owned]
    ) -> None:
        """ConfigError when the new config strands what waits: rows its integrations serve no more, a kind's or a
        tenant's, or devices of a tenant it has no table for (cloud_bridge/reload_guard.py); the new integrations
        are closed then. Removing either on purpose takes its rows or devices first, or a restart."""
        old, new = Serving.of(self.integrations, self.tenant_integrations), Serving.of(integrations, own)
        before, after = self.settings.config.tenants, settings.config.tenants
        devices = await own_thread(self.registry.all_devices) if set(before) - set(after) else []
        try:
            await refuse_stranding(self.ledger, old, new, self._clock(), dropped(before, after, devices))
        except ConfigError:
            running = every_integration(self.integrations, self.tenant_integrations)
            built = every_integration(integrations, own)
            await asyncio.gather(*(i.aclose() for i in built if not any(i is r for r in running)))
            raise

    async def _reload_answer(self) -> dict[str, Any]:
        try:
            integrations = await self.reload()
        except BridgeError as exc:
            return {"ok": False, "error": clip(exc.detail, MAX_ERROR_CHARS), "generation": self.generation}
        certificate = None if self.certificate is None else self.certificate.to_json()
        return {"ok": True, "generation": self.generation, "integrations": integrations, "certificate": certificate}

    @property
    def executor(self) -> Executor | None:
        """The running executor (None before start)."""
        return self._executor

    def _https_server(self, app: web.Application, context: ssl.SSLContext) -> HttpServer:
        """The HTTPS listener (enrollment, the device's status, the dashboard) under the connection limits."""
        limits = self.settings.connection_limits
        return HttpServer(app, self.settings.http_listen, context, "--http-listen", limits=limits, watch=self.metrics)

    def _tenant_of(self, device_id: str) -> str | None:
        device = self.registry.get(device_id)
        return None if device is None else device.tenant

    def _revoked(self, device_id: str) -> bool:
        return self.listener is not None and device_id in self.listener.revoked

    async def stop(self) -> None:
        """Stop in reverse order, after a reload under way; safe after a failed start."""
        self._stopping = True  # a reload went on under a stop: its integrations swapped in, open, never closed
        if self._ops is not None:  # /healthz fails from now: a balancer sends no device back here
            self._ops.stopping = True
        if self._reload_lock.locked():
            logger.info("stopping: the stop waits for the reload under way")
        async with self._reload_lock:
            pass
        if self._control is not None:
            await self._control.stop()
        if self.retention is not None:
            await self.retention.stop()
        await self.store.signals.stop()
        if self._asks is not None:
            await self._asks.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.fleet_desk is not None:
            await self.fleet_desk.stop()
        if self._executor is not None:
            await self._executor.stop()
        if self._refusals is not None:
            await self._refusals.close()
        if self.service is not None:
            await self.service.close()
        for server in self._servers:
            await server.stop()
        for integration in every_integration(self.integrations, self.tenant_integrations):
            try:
                await integration.aclose()
            except BridgeError:
                logger.exception("integration %s did not close cleanly", integration.kind)
        if self._opened:
            await self.store.close()
        if self._lock is not None:
            self._lock.release()
