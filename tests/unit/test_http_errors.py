"""aiohttp exceptions become bridge errors naming only the class and host; the guard's own errors pass through."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from cloud_bridge.errors import BridgeError, PermanentError, TransientError
from cloud_bridge.integrations.http import aiohttp_error

SECRET_URL = URL("https://api.example/v1/x?key=s3cret")
KEY = ConnectionKey("api.example", 443, True, True, None, None, None)
INFO = RequestInfo(SECRET_URL, "GET", CIMultiDictProxy(CIMultiDict(Authorization="Bearer s3cret")), SECRET_URL)


def wrapped(inner: BaseException) -> aiohttp.ClientConnectorError:
    """What aiohttp raises for a resolver failure: the cause sits behind a connector error."""
    outer = aiohttp.ClientConnectorDNSError(KEY, OSError("lookup failed"))
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (TimeoutError(), TransientError, "http_timeout"),
        (aiohttp.ConnectionTimeoutError(), TransientError, "http_timeout"),
        (aiohttp.SocketTimeoutError(), TransientError, "http_timeout"),
        (aiohttp.ClientConnectorError(KEY, ConnectionRefusedError()), TransientError, "http_connection"),
        (aiohttp.ServerDisconnectedError(), TransientError, "http_connection"),
        (aiohttp.ClientPayloadError(), TransientError, "http_connection"),
        (aiohttp.ClientResponseError(INFO, (), status=400, message="bad status line"), TransientError,
         "http_connection"),
        (aiohttp.InvalidURL(SECRET_URL), PermanentError, "http_error"),
        (aiohttp.ClientError(), PermanentError, "http_error"),
    ],
)  # fmt: skip
def test_mapping_names_class_and_host_only(exc: BaseException, kind: type[BridgeError], code: str) -> None:
    error = aiohttp_error(exc, "api.example")
    assert type(error) is kind
    assert error.code == code
    assert error.detail == f"{exc.__class__.__name__} talking to api.example"


@pytest.mark.parametrize(
    "inner",
    [PermanentError("refused: loopback", code="ssrf_blocked"), TransientError("no address", code="dns_error")],
)
def test_the_guards_error_comes_back_as_itself(inner: BridgeError) -> None:
    assert aiohttp_error(wrapped(inner), "api.example") is inner


def test_other_causes_are_mapped_by_the_outer_class() -> None:
    error = aiohttp_error(wrapped(OSError("no route")), "api.example")
    assert (type(error), error.code) == (TransientError, "http_connection")
