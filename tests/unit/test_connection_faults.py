"""What a connection fault's detail says about its cause: read from the exception's chain, never its text."""

from __future__ import annotations

import errno
import itertools
import socket
import ssl

import pytest

from cloud_bridge.integrations.faults import connection_cause, talking_to


def chained(*links: BaseException) -> BaseException:
    """`links[0]` raised from `links[1]`, raised from `links[2]`..."""
    for outer, inner in itertools.pairwise(links):
        outer.__cause__ = inner
    return links[0]


class LibraryError(Exception):
    """A client library's own error, whose text may quote a URL with its credential."""


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (chained(LibraryError("https://u:s3cret@h/"), OSError("all failed"), ConnectionRefusedError(111, "x")),
         "connection refused"),
        (chained(LibraryError(), socket.gaierror(socket.EAI_NONAME, "x")), "name not resolved"),
        (chained(LibraryError(), socket.gaierror(socket.EAI_AGAIN, "x")), "name not resolved (no answer in time)"),
        (chained(LibraryError(), OSError(errno.ENETUNREACH, "x")), "network is unreachable"),
        # aiohttp's TLS errors are OSErrors with OpenSSL's errno 1 around the ssl error: the ssl one speaks
        (chained(OSError(1, "wrapper"), ssl.SSLError(1, "x")), "TLS failed"),
        # a timeout's causes are what it cut short (a TLS read that wanted more), not why it failed
        (chained(LibraryError(), TimeoutError(), ssl.SSLWantReadError(2, "x")), ""),
        (chained(LibraryError("https://u:s3cret@h/"), OSError("no errno")), ""),
        (LibraryError("s3cret"), ""),
    ],
)  # fmt: skip
def test_the_cause_is_a_fixed_phrase(exc: BaseException, cause: str) -> None:
    assert connection_cause(exc) == cause
    assert "s3cret" not in talking_to(exc, "api.example")


def test_a_chain_that_loops_ends() -> None:
    outer, inner = LibraryError(), LibraryError()
    outer.__context__, inner.__context__ = inner, outer
    assert talking_to(outer, "api.example") == "LibraryError talking to api.example"
