"""The dashboard's pages on the bridge's HTTPS endpoint, under /ui/: server-rendered HTML, no script.

Every page needs a logged-in operator; every state-changing request is a POST that carries the
session's CSRF token and comes from our own origin (docs/dashboard.md). Templates autoescape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from cloud_bridge.dashboard.auth import COOKIE, SESSION_S, Operator, OperatorAuth
from cloud_bridge.dashboard.data import DashboardData, FleetRow
from cloud_bridge.dashboard.notice import NOTICE_COOKIE, NOTICE_S, notice_text, notice_value
from cloud_bridge.dashboard.usage_chart import HEIGHT, WIDTH, bars
from cloud_bridge.enroll_http import STORE_LOG_INTERVAL, STORE_RETRY_AFTER
from cloud_bridge.enroll_limits import EnrollGate, EnrollLimits
from cloud_bridge.errors import TransientError
from cloud_bridge.fleet_rules import clock_text
from cloud_bridge.own_threads import own_thread
from cloud_bridge.usage import day_of
from intent_contract.logs import LogThrottle, left_out
from intent_contract.names import KINDS, is_name
from intent_contract.timefmt import format_age, format_ms

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PREFIX = "/ui/"
USAGE_DAYS = 30
# Login attempts, whatever their outcome, per client address (an IPv6 /64 counts as one) and from everywhere:
# each costs a scrypt (45 ms of a core). An operator needs a few; a guesser is held to 10 a minute.
LOGIN_LIMITS = EnrollLimits(per_address_per_minute=10.0, per_minute=100.0)
# Password checks run on a thread of their own, one at a time: on the loop's default pool a flood of
# logins queued ahead of device authentication (/v1/device, MQTT CONNECT) and held it for seconds.
LOGIN_THREADS = 1
STATES = ("queued", "running", "delivered", "failed", "expired", "rejected")
FLEET_ROWS = 500  # the fleet page's rows, stuck ones first; the header counts them all
INTENT_ROWS = 200  # the intents page's rows; the device page shows DEVICE_INTENT_ROWS
DEVICE_INTENT_ROWS = 50
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPERATOR = web.RequestKey("operator", Operator)
ATTEMPT = re.compile(r"[0-9]{1,9}")  # the attempt an action's page showed
SESSION_ENDED = (
    "Your session had ended (it expired, or was logged out in another tab): nothing was done. Log in and try again."
)
STORE_DOWN = (
    "The bridge cannot reach its store now ({code}), so this page cannot be shown: reload it in a while; if it"
    " stays so, check the store (the database server, or the data directory's disk) and the bridge's log."
)


def _when(seconds: float | None) -> str:
    return format_ms(int(seconds * 1000)) if seconds else "-"


def _age(seconds: float | None) -> str:
    return format_age(seconds) if seconds is not None else "-"


def _clock(offset_s: float | None) -> str:
    """The edge's clock against the bridge's as `devices ls` says it ('+2h00m': the edge is ahead); the page
    showed the bridge's minus the edge's in seconds, '-7200.0 s' for the same edge."""
    return clock_text(None if offset_s is None else round(offset_s * 1000))


class Dashboard:
    def __init__(
        self, data: DashboardData, auth: OperatorAuth, clock: Callable[[], float] = time.time, prefix: str = PREFIX
    ) -> None:
        self.prefix = prefix
        self._data = data
        self._auth = auth
        self._clock = clock
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self._templates.filters.update(when=_when, age=_age, clock=_clock)
        self._login_gate = EnrollGate(LOGIN_LIMITS)  # enrollment's limiter: the same buckets, other limits
        self._log_refusal = LogThrottle()
        self._log_store = LogThrottle(STORE_LOG_INTERVAL)
        self._password_checks = ThreadPoolExecutor(LOGIN_THREADS, thread_name_prefix="dashboard-login")
        # The few files under static/, read once: a request names one of them or gets a 404, and never
        # reaches the file system (aiohttp's static route raised OSError, a 500, on a 300-character name).
        self._static = {
            path.name: (path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            for path in (HERE / "static").iterdir()
            if path.is_file()
        }

    def use_auth(self, auth: OperatorAuth) -> None:
        """Operators and session key from now on (a reload): a removed operator's or an old key's cookie is refused."""
        self._auth = auth

    def mount(self, parent: web.Application) -> None:
        """Serve the dashboard under `prefix` on `parent`, and the prefix without its slash ("/ui", typed by
        hand: it was a 404) as a redirect to it."""
        parent.router.add_get(self.prefix.rstrip("/"), self._to_root)  # first: the sub-app takes "/ui" too
        parent.add_subapp(self.prefix, self.app())

    async def _to_root(self, _request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(self.prefix)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._security])
        app.on_cleanup.append(self._close)
        app.router.add_get("/", self._fleet)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/devices/{device_id}", self._device)
        app.router.add_get("/intents", self._intents)
        app.router.add_post("/intents/{device_id}/{intent_id}/{action:retry|cancel}", self._act)
        app.router.add_get("/usage", self._usage)
        app.router.add_get("/static/{name}", self._static_file)
        return app

    async def _close(self, _app: web.Application) -> None:
        await own_thread(self._password_checks.shutdown, wait=True, cancel_futures=True)

    # -- the gate ----------------------------------------------------------------------------------

    @web.middleware
    async def _security(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The gate, and HEADERS on every answer: also a refusal, a redirect or an error page, which are raised
        (they went out without them: a 404 or 403 page could be framed, and the login's redirect cached)."""
        try:
            response = await self._gate(request, handler)
        except web.HTTPException as exc:
            exc.headers.update(HEADERS)
            raise
        except TransientError as exc:  # the store failed: the page says so (it was the enrollment API's JSON)
            response = self._store_down(request, exc)
        response.headers.update(HEADERS)
        return response

    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Decided by the route the request matched, never by the path's text (a device named "login").
        handler_of = request.match_info.route.handler
        public = handler_of in (self._login_page, self._login, self._static_file)
        cookie = request.cookies.get(COOKIE)
        operator = self._auth.operator(cookie, self._clock())
        if not public and operator is None:
            if request.method != "GET" and not _same_origin(request):
                raise web.HTTPForbidden(text="log in first")
            # A form of a page shown before the session ended (it expired, or was logged out in another tab) was a
            # bare 403 "log in first": it leads to the login page, which says the action was not taken.
            redirect = web.HTTPSeeOther(self.prefix + "login")
            if request.method != "GET" and handler_of != self._logout:
                redirect.set_cookie(NOTICE_COOKIE, notice_value(SESSION_ENDED), max_age=NOTICE_S, path="/",
                                    secure=True, httponly=True, samesite="Strict")  # fmt: skip
            raise redirect
        if request.method == "POST" and handler_of != self._login:
            form = await read_form(request)
            if not _same_origin(request) or not self._auth.csrf_ok(cookie, _text(form.get("csrf"))):
                logger.warning("dashboard request refused: cross-site or without its token",
                               extra={"client": request.remote})  # fmt: skip
                raise web.HTTPForbidden(text="cross-site request refused")
        if operator is not None:
            request[OPERATOR] = operator
        return await handler(request)

    def _store_down(self, request: web.Request, exc: TransientError) -> web.Response:
        not_logged = self._log_store.allow(time.monotonic())
        if not_logged is not None:  # the code, not the message: it names the store's files or address
            logger.error("%s %s not served: the store failed (%s)%s", request.method, request.path, exc.code,
                         left_out(not_logged), extra={"code": exc.code, "not_logged": not_logged})  # fmt: skip
        response = self._page(request, "error.html", error=STORE_DOWN.format(code=exc.code))
        response.set_status(503)
        response.headers["Retry-After"] = str(STORE_RETRY_AFTER)
        return response

    def _page(self, request: web.Request, template: str, **values: Any) -> web.Response:
        operator = request.get(OPERATOR)  # only then is the cookie ours (and ASCII)
        html = self._templates.get_template(template).render(
            operator=operator,
            csrf=self._auth.csrf_token(request.cookies.get(COOKIE, "")) if operator is not None else "",
            ui=self.prefix,
            **values,
        )
        return web.Response(text=html, content_type="text/html")

    async def _static_file(self, request: web.Request) -> web.Response:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file")
        body, content_type = found
        return web.Response(body=body, content_type=content_type)

    # -- login ---------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.Response:
        response = self._page(request, "login.html", error="", notice=notice_text(request.cookies.get(NOTICE_COOKIE)))
        _shown(request, response)
        return response

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        wait = self._login_gate.admit(request.remote, self._clock())
        if wait is not None:
            return self._too_many_logins(request, wait)
        form = await read_form(request)
        name, password = _text(form.get("user")), _text(form.get("password"))
        loop = asyncio.get_running_loop()
        ok = bool(name) and await loop.run_in_executor(self._password_checks, self._auth.check_password, name, password)
        if not ok:
            logger.warning("dashboard login refused", extra={"client": request.remote, "code": "bad_login"})
            response = self._page(request, "login.html", error="Unknown operator or wrong password.", notice="")
            response.set_status(401)
            return response
        logger.info("dashboard login", extra={"client": request.remote, "app": name})
        redirect = web.HTTPSeeOther(self.prefix)
        redirect.set_cookie(COOKIE, self._auth.session(name, self._clock()), max_age=int(SESSION_S),
                            path="/", secure=True, httponly=True, samesite="Strict")  # fmt: skip
        raise redirect

    def _too_many_logins(self, request: web.Request, wait: float) -> web.Response:
        retry = str(max(1, math.ceil(wait)))
        not_logged = self._log_refusal.allow(self._clock())
        if not_logged is not None:
            more = f" (and {not_logged} not logged since the last line)" if not_logged else ""
            logger.warning(
                "dashboard login refused from %s: too many attempts%s", request.remote, more,
                extra={"client": request.remote, "code": "rate_limited", "not_logged": not_logged},
            )  # fmt: skip
        response = self._page(
            request, "login.html", error=f"Too many login attempts; try again in {retry} s.", notice=""
        )
        response.set_status(429)
        response.headers["Retry-After"] = retry
        return response

    async def _logout(self, _request: web.Request) -> web.StreamResponse:
        redirect = web.HTTPSeeOther(self.prefix + "login")
        # Secure as when it was set: a browser ignores a __Host- cookie without it, the deletion included, and
        # without it the session stayed after "Log out" (the next page was the fleet again).
        redirect.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        raise redirect

    # -- pages ---------------------------------------------------------------------------------

    async def _fleet(self, request: web.Request) -> web.Response:
        tenant, stuck_only = request.query.get("tenant") or None, request.query.get("stuck") == "1"
        if tenant is not None and not is_name(tenant):
            raise web.HTTPBadRequest(text="tenant must be a valid name")
        rows = stuck_first(await self._data.fleet(tenant, stuck_only))
        # At most FLEET_ROWS rows: the page listed every device, tens of thousands of rows for a large fleet, with
        # no way to look at one tenant's or only the stuck ones (`devices ls --tenant --stuck` could).
        return self._page(request, "fleet.html", rows=rows[:FLEET_ROWS], total=len(rows),
                          stuck=sum(r.stuck for r in rows), tenant=tenant or "", stuck_only=stuck_only)  # fmt: skip

    async def _device(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        view = await self._data.device(device_id) if is_name(device_id) else None
        if view is None:
            raise web.HTTPNotFound(text="no such device")
        # One row more than shown: the page says when more match, rather than pass the first ones off as all.
        intents = await self._data.intents(
            device_id=device_id, tenant=None, state=None, kind=None, limit=DEVICE_INTENT_ROWS + 1
        )
        more, href = len(intents) > DEVICE_INTENT_ROWS, f"{self.prefix}intents?device={device_id}"
        return self._page(request, "device.html", view=view, intents=intents[:DEVICE_INTENT_ROWS], more=more,
                          more_href=href)  # fmt: skip

    async def _intents(self, request: web.Request) -> web.Response:
        query = {k: request.query.get(k) or None for k in ("device", "tenant", "state", "kind")}
        for key in ("device", "tenant"):
            if query[key] is not None and not is_name(query[key]):
                raise web.HTTPBadRequest(text=f"{key} must be a valid name")
        if query["state"] is not None and query["state"] not in STATES:
            raise web.HTTPBadRequest(text="unknown state")
        if query["kind"] is not None and query["kind"] not in KINDS:  # also keeps NUL away from PostgreSQL
            raise web.HTTPBadRequest(text="unknown kind")
        intents = await self._data.intents(
            device_id=query["device"], tenant=query["tenant"], state=query["state"], kind=query["kind"],
            limit=INTENT_ROWS + 1,
        )  # fmt: skip
        notice = notice_text(request.cookies.get(NOTICE_COOKIE))
        response = self._page(request, "intents.html", intents=intents[:INTENT_ROWS], query=query, states=STATES,
                              notice=notice, more=len(intents) > INTENT_ROWS, more_href="")  # fmt: skip
        _shown(request, response)
        return response

    async def _act(self, request: web.Request) -> web.StreamResponse:
        device_id, intent_id, action = (request.match_info[k] for k in ("device_id", "intent_id", "action"))
        if not (is_name(device_id) and is_name(intent_id)):
            raise web.HTTPBadRequest(text="bad device or intent id")
        operator = request[OPERATOR]
        act = self._data.retry if action == "retry" else self._data.cancel
        shown = _text((await read_form(request)).get("attempt"))  # read by the gate already: cached
        if shown and ATTEMPT.fullmatch(shown) is None:  # no page shows it (5,000 digits made int() raise: a 500)
            raise web.HTTPBadRequest(text="bad attempt")
        outcome = await act(device_id, intent_id, operator.name, int(shown) if shown else None)
        logger.info("dashboard %s: %s", action, outcome,
                    extra={"device_id": device_id, "intent_id": intent_id, "app": operator.name})  # fmt: skip
        # Post/Redirect/Get: the page after an action is a GET, so reloading it does not send the action again
        # (it did: a reload retried the intent once more). The outcome line follows in a one-page cookie.
        redirect = web.HTTPSeeOther(f"{self.prefix}intents?device={device_id}")
        redirect.set_cookie(NOTICE_COOKIE, notice_value(outcome), max_age=NOTICE_S, path="/", secure=True,
                            httponly=True, samesite="Strict")  # fmt: skip
        raise redirect

    async def _usage(self, request: web.Request) -> web.Response:
        tenant = request.query.get("tenant") or None
        if tenant is not None and not is_name(tenant):
            raise web.HTTPBadRequest(text="tenant must be a valid name")
        rows = await self._data.usage(tenant, USAGE_DAYS)
        peak = max((r.count for r in rows), default=0)
        chart = bars(rows, day_of(self._clock()), USAGE_DAYS)
        return self._page(request, "usage.html", rows=rows[::-1], tenant=tenant, peak=peak, chart=chart,
                          width=WIDTH, height=HEIGHT, days=USAGE_DAYS)  # fmt: skip


def stuck_first(rows: list[FleetRow]) -> list[FleetRow]:
    """Stuck devices first, then by oldest pending work, then by id."""
    return sorted(rows, key=lambda r: (not r.stuck, -(r.oldest_pending_s or 0.0), r.device_id))


async def read_form(request: web.Request) -> Mapping[str, object]:
    """The request's form; 400 when its body cannot be read as one (a browser's always can).

    Our forms are urlencoded: multipart (files, nested parts, per-part encodings) is refused unread.
    """
    if request.content_type == "multipart/form-data":
        raise web.HTTPBadRequest(text="the dashboard's forms are application/x-www-form-urlencoded")
    try:
        return await request.post()
    except (ValueError, LookupError, web.RequestPayloadError) as exc:
        # Not UTF-8 (UnicodeDecodeError is a ValueError), an unknown charset (LookupError), a body that is
        # not the Content-Encoding it claims (RequestPayloadError).
        logger.info("dashboard form refused: %s", type(exc).__name__, extra={"client": request.remote})
        raise web.HTTPBadRequest(text="the form could not be read") from None


def _shown(request: web.Request, response: web.Response) -> None:
    """Delete the notice cookie a page has shown: a reload shows the page without it."""
    if NOTICE_COOKIE in request.cookies:
        response.del_cookie(NOTICE_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _same_origin(request: web.Request) -> bool:
    """A state-changing request must say it comes from our own origin (browsers send Origin on POST)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:  # such as "https://[": not our origin, whatever it is
        return False
    return parts.scheme == "https" and parts.netloc == request.host
