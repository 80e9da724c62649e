"""Why a connection to a provider failed, in words an operator can act on, read from the exception's causes.

A detail named only the outermost class: sms.send's `ConnectError talking to api.twilio.com` stood for a
refused connection, a name that does not resolve, a certificate not trusted and a peer that does not speak
TLS alike, and email.send's `SMTPConnectError` for the last two. The causes are in the exception's chain
(httpx and aiosmtplib raise from them), so they are read from there. Only fixed phrases go into a detail,
and the names OpenSSL and the C library give their errors, never an exception's text: a library's message
may quote a URL, and a URL may carry a credential.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Iterator


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _phrase(exc: BaseException) -> str:
    """The phrase for one exception of the chain that names its cause exactly, or ""."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # OpenSSL's verify message ("unable to get local issuer certificate") or Python's "Hostname mismatch,
        # certificate is not valid for 'host'." (a host the config names)
        reason = str(getattr(exc, "verify_message", None) or "").rstrip(".")[:120]
        return f"TLS certificate not accepted ({reason})" if reason else "TLS certificate not accepted"
    if isinstance(exc, ssl.SSLWantReadError | ssl.SSLWantWriteError):
        return ""  # not a failure: the handshake was waiting for the peer
    if isinstance(exc, ssl.SSLError):
        # an OpenSSL reason name such as WRONG_VERSION_NUMBER (a peer that does not speak TLS)
        name = getattr(exc, "reason", None)  # aiohttp's TLS errors subclass ssl's without its attributes
        return f"TLS failed ({name})" if isinstance(name, str) and name else "TLS failed"
    if isinstance(exc, socket.gaierror):
        return "name not resolved" if exc.errno != socket.EAI_AGAIN else "name not resolved (no answer in time)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return ""


def connection_cause(exc: BaseException) -> str:
    """Why a connection failed ("connection refused", "name not resolved", "TLS certificate not accepted (...)"),
    from `exc`'s chain; "" when nothing in it says more than its class.

    The innermost cause that names a TLS, name or refusal error wins (aiohttp's certificate error wraps the
    ssl one that holds the reason), else the innermost system error ("network is unreachable"). A timeout's
    causes are what it interrupted (a TLS read that wanted more), not why: the chain is read up to it only.
    """
    links: list[BaseException] = []
    for link in _chain(exc):
        if isinstance(link, TimeoutError) or not isinstance(link, Exception):  # a timeout, a cancellation
            break
        links.append(link)
    for link in reversed(links):
        if phrase := _phrase(link):
            return phrase
    for link in reversed(links):
        if isinstance(link, OSError) and isinstance(link.errno, int) and link.errno in errno.errorcode:
            return os.strerror(link.errno).lower()
    return ""


def talking_to(exc: BaseException, where: str) -> str:
    """`ExcClass talking to host[: cause]`: the detail of a connection fault."""
    cause = connection_cause(exc)
    return f"{exc.__class__.__name__} talking to {where}" + (f": {cause}" if cause else "")
