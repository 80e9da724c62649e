"""The requests adapter: what it touches is still there, and a body read inside bounded_bodies() ends at the
limit while one outside is requests' own."""

from __future__ import annotations

import io
import threading

import requests

from cloud_bridge.integrations import requests_bodies
from cloud_bridge.integrations.requests_bodies import MAX_BODY, bounded_bodies


def response(size: int) -> requests.Response:
    answer = requests.Response()
    answer.status_code = 200
    answer.raw = io.BytesIO(b"x" * size)
    return answer


def test_content_reads_its_body_through_iter_content() -> None:
    """The one thing the adapter relies on: `Response.content` joins `iter_content` (an upgrade may change it)."""
    requests_bodies.install()
    assert requests.models.Response.iter_content is requests_bodies._iter_content
    with bounded_bodies(limit=10):
        assert response(11).content == b""  # cut where the limit passed: nothing read past it is kept
    assert response(3 * MAX_BODY).content == b"x" * (3 * MAX_BODY)


def test_a_body_ends_at_the_limit_only_inside_the_block_and_only_in_its_thread() -> None:
    other: list[int] = []
    with bounded_bodies():
        assert len(response(10 * MAX_BODY).content) <= MAX_BODY
        assert response(100).content == b"x" * 100
        thread = threading.Thread(target=lambda: other.append(len(response(10 * MAX_BODY).content)))
        thread.start()
        thread.join()
    assert other == [10 * MAX_BODY]
    assert len(response(10 * MAX_BODY).content) == 10 * MAX_BODY
