"""The dashboard against what no browser sends: bytes a client library would refuse, through raw HTTP.

Every one of these was an HTTP 500 (an exception out of a handler); each is a 4xx now, and the pages
work as before for everyone else.
"""

from __future__ import annotations

import re
from pathlib import Path

from cloud_bridge import dashboard
from cloud_bridge.dashboard.auth import COOKIE
from tests.support.bridge import Harness, counting
from tests.support.dashboard import PASSWORD, dashboard_bridge, operator_hashes, session
from tests.support.raw_http import origin, raw_request

__all__ = ["counting", "dashboard_bridge", "operator_hashes"]  # fixtures
FORM = ("Content-Type", b"application/x-www-form-urlencoded")


async def test_a_non_ascii_session_cookie_is_nobody(dashboard_bridge: Harness) -> None:
    for cookie in (b"a.\xc3\xa9", b"a.\xff", "\u00e9.00".encode()):
        headers = [("Cookie", COOKIE.encode() + b"=" + cookie)]
        assert (await raw_request(dashboard_bridge, "GET", "/ui/login", headers))[0] == 200, cookie
        status, response = await raw_request(dashboard_bridge, "GET", "/ui/", headers)
        assert status == 303 and b"Location: /ui/login" in response, cookie


async def test_a_non_ascii_csrf_token_is_refused(dashboard_bridge: Harness) -> None:
    cookie = ("Cookie", f"{COOKIE}={await session(dashboard_bridge)}".encode())
    for path in ("/ui/logout", "/ui/intents/dev-1/i-1/retry", "/ui/intents/dev-1/i-1/cancel"):
        for body in (b"csrf=%C3%A9", b"csrf=%FF", "csrf=\u00e9".encode()):
            status, _ = await raw_request(
                dashboard_bridge, "POST", path, [origin(dashboard_bridge), cookie, FORM], body
            )
            assert status == 403, (path, body)


async def test_a_malformed_origin_or_referer_is_cross_site(dashboard_bridge: Harness) -> None:
    cookie = ("Cookie", f"{COOKIE}={await session(dashboard_bridge)}".encode())
    login = b"user=alice&password=" + PASSWORD.replace(" ", "+").encode()
    for header in ("Origin", "Referer"):
        for value in (b"https://[", b"https://[zz]", b"https://127.0.0.1:99999"):
            status, _ = await raw_request(dashboard_bridge, "POST", "/ui/login", [(header, value), FORM], login)
            assert status == 403, (header, value)
            status, _ = await raw_request(dashboard_bridge, "POST", "/ui/logout", [(header, value), cookie, FORM])
            assert status == 403, (header, value)


async def test_a_form_body_that_cannot_be_read_is_400(dashboard_bridge: Harness) -> None:
    cookie = ("Cookie", f"{COOKIE}={await session(dashboard_bridge)}".encode())
    urlencoded = b"application/x-www-form-urlencoded"
    cases: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (urlencoded, b"\xff=\xff", []),  # not UTF-8
        (urlencoded + b"; charset=bogus", b"user=alice&password=x", []),  # an unknown charset
        (urlencoded, b"user=alice&password=x", [("Content-Encoding", b"gzip")]),  # says gzip, is not
        (b"multipart/form-data", b"user=alice", []),  # no boundary
        (b"multipart/form-data; boundary=x", b"--x\r\ngarbage", []),  # broken multipart
        (b"multipart/form-data; boundary=x",
         b'--x\r\nContent-Disposition: form-data; name="user"\r\n\r\n\xff\r\n--x--\r\n', []),  # a field not UTF-8
    ]  # fmt: skip
    for content_type, body, extra in cases:
        headers = [origin(dashboard_bridge), ("Content-Type", content_type), *extra]
        for path, more in (("/ui/login", []), ("/ui/logout", [cookie]), ("/ui/intents/dev-1/i-1/retry", [cookie])):
            status, _ = await raw_request(dashboard_bridge, "POST", path, headers + more, body)
            assert status == 400, (path, content_type, body)


async def test_static_serves_its_files_and_404s_any_other_name(dashboard_bridge: Harness) -> None:
    status, response = await raw_request(dashboard_bridge, "GET", "/ui/static/style.css")
    assert status == 200 and b"Content-Type: text/css" in response
    css = Path(dashboard.__file__).parent / "static" / "style.css"
    assert response.endswith(css.read_bytes())
    for name in ("a" * 300, "nope.css", "..%2fauth.py", "%2e%2e%2fviews.py", "%00"):
        assert (await raw_request(dashboard_bridge, "GET", f"/ui/static/{name}"))[0] == 404, name


async def test_only_the_login_and_static_routes_are_open_to_strangers(dashboard_bridge: Harness) -> None:
    # The gate once opened any path ending in "/login" or holding "/static/": a device page for a device
    # named "login" or an id with an escaped slash was shown to anyone.
    for path in ("/ui/devices/login", "/ui/devices/x%2Fstatic%2Fy", "/ui/usage/login", "/ui/intents?device=login"):
        status, response = await raw_request(dashboard_bridge, "GET", path)
        assert status == 303 and b"Location: /ui/login" in response, (path, status)
    assert (await raw_request(dashboard_bridge, "GET", "/ui/login"))[0] == 200
    assert (await raw_request(dashboard_bridge, "GET", "/ui/static/style.css"))[0] == 200


async def test_the_prefix_without_its_slash_leads_to_the_dashboard(dashboard_bridge: Harness) -> None:
    """`https://bridge:8443/ui`, typed by hand by an operator logged in, was a 404."""
    cookie = ("Cookie", f"{COOKIE}={await session(dashboard_bridge)}".encode())
    status, response = await raw_request(dashboard_bridge, "GET", "/ui", [cookie])
    assert status == 302 and b"Location: /ui/\r\n" in response, response[:300]


async def test_every_answer_carries_the_security_headers_refusals_and_errors_too(dashboard_bridge: Harness) -> None:
    """The headers were added to pages a handler returned only: a 404, 400 or 403 and every redirect (raised, not
    returned) went out without X-Frame-Options, the CSP or no-store."""
    cookie = ("Cookie", f"{COOKIE}={await session(dashboard_bridge)}".encode())
    login = b"user=alice&password=" + PASSWORD.replace(" ", "+").encode()
    answers = {
        "no such device": await raw_request(dashboard_bridge, "GET", "/ui/devices/nope", [cookie]),
        "bad filter": await raw_request(dashboard_bridge, "GET", "/ui/intents?kind=fax", [cookie]),
        "no such file": await raw_request(dashboard_bridge, "GET", "/ui/static/nope.css"),
        "no session": await raw_request(dashboard_bridge, "GET", "/ui/"),
        "no token": await raw_request(dashboard_bridge, "POST", "/ui/logout", [origin(dashboard_bridge), cookie, FORM]),
        "cross-site login": await raw_request(dashboard_bridge, "POST", "/ui/login",
                                              [("Origin", b"https://evil.example"), FORM], login),
        "logged in": await raw_request(dashboard_bridge, "POST", "/ui/login", [origin(dashboard_bridge), FORM], login),
    }  # fmt: skip
    assert {what: status for what, (status, _) in answers.items()} == {
        "no such device": 404, "bad filter": 400, "no such file": 404, "no session": 303, "no token": 403,
        "cross-site login": 403, "logged in": 303,
    }  # fmt: skip
    for what, (_, response) in answers.items():
        head = response.split(b"\r\n\r\n", 1)[0]
        for header in (b"X-Frame-Options: DENY", b"Content-Security-Policy: default-src 'none';",
                       b"X-Content-Type-Options: nosniff", b"Cache-Control: no-store"):  # fmt: skip
            assert header in head, (what, header)


async def test_an_attempt_of_thousands_of_digits_is_no_500(dashboard_bridge: Harness) -> None:
    """A retry's form carries the attempt its page showed; 5,000 digits made int() raise (Python's limit on the
    digits of a string it converts, 4,300) out of the handler: a 500. No page shows such an attempt: 400; one that
    may be is judged (here: no such intent, the notice says so on the intents page)."""
    cookie = ("Cookie", f"{COOKIE}={await session(dashboard_bridge)}".encode())
    _, page = await raw_request(dashboard_bridge, "GET", "/ui/intents", [cookie])
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    for attempt, expected in ((b"9" * 5000, 400), (b"%D9%A3", 400), (b"-1", 400), (b"3", 303)):
        body = b"csrf=" + csrf.group(1) + b"&attempt=" + attempt
        status, _ = await raw_request(
            dashboard_bridge, "POST", "/ui/intents/dev-1/i-1/retry", [origin(dashboard_bridge), cookie, FORM], body
        )
        assert status == expected, attempt[:20]
