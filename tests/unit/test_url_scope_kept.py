"""UrlScope keeps its answers: the same as checking afresh, for its own scope only, refusals never kept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.errors import PermanentError
from cloud_bridge.integrations import url_scope
from cloud_bridge.integrations.url_scope import KEEP_LEN, UrlScope
from tests.unit.test_ssrf_props import PATHS, PREFIXES

WIDE = UrlScope.from_config({"base_urls": ["https://api.crm.example/v1/"], "methods": ["GET", "POST"]}, "wide")


def answer(scope: UrlScope, method: str, url: object, path: object) -> tuple[str, str] | str:
    """The answer checked afresh, or the refusal's code."""
    try:
        return scope._resolve(method, url, path, "crm")
    except PermanentError as exc:
        return exc.code


def kept(scope: UrlScope, payload: dict[str, Any]) -> tuple[str, str] | str:
    try:
        return scope.request(payload, "crm")
    except PermanentError as exc:
        return exc.code


@settings(max_examples=500, deadline=None)
@given(prefix=PREFIXES, path=PATHS, as_url=st.booleans())
def test_a_kept_answer_is_the_answer_checked_afresh(prefix: str, path: str, as_url: bool) -> None:
    payload: dict[str, Any] = {"method": "GET", "url": prefix + path} if as_url else {"method": "GET", "path": path}
    fresh = answer(WIDE, "GET", payload.get("url"), payload.get("path"))
    assert kept(WIDE, payload) == fresh
    assert kept(WIDE, payload) == fresh  # the second time from what was kept, when it was allowed


def test_an_answer_is_kept_for_its_own_scope_only() -> None:
    """A tenant's narrowed scope must not be handed the wider credential scope's answer."""
    narrow = WIDE.narrowed({"base_urls": ["https://api.crm.example/v1/acme/"], "methods": ["GET"]}, "acme")
    elsewhere = replace(WIDE, path_base=url_scope.BaseUrl.parse("https://api.crm.example/v1/other/"))
    payload = {"method": "GET", "path": "/contacts"}
    assert kept(WIDE, payload) == ("GET", "https://api.crm.example:443/v1/contacts")
    assert kept(narrow, payload) == "policy_url"  # a path resolves against the credential's first base
    assert kept(narrow, {"method": "GET", "path": "/acme/contacts"}) == (
        "GET",
        "https://api.crm.example:443/v1/acme/contacts",
    )
    assert kept(elsewhere, payload) == ("GET", "https://api.crm.example:443/v1/other/contacts")
    outside = {"method": "POST", "url": "https://api.crm.example/v1/contacts"}
    assert kept(WIDE, outside) == ("POST", "https://api.crm.example:443/v1/contacts")
    assert kept(narrow, outside) == "policy_method"
    assert kept(narrow, {**outside, "method": "GET"}) == "policy_url"


def test_refusals_and_long_urls_are_not_kept() -> None:
    url_scope._resolve_kept.cache_clear()
    assert kept(WIDE, {"method": "GET", "path": "/a/../b"}) == "policy_url"
    long_path = "/x" * KEEP_LEN
    assert kept(WIDE, {"method": "GET", "path": long_path}) == ("GET", "https://api.crm.example:443/v1" + long_path)
    assert kept(WIDE, {"method": "GET", "path": ["/x"]}) == "policy_url"  # not a string: not hashable, not kept
    assert url_scope._resolve_kept.cache_info().currsize == 0
    assert kept(WIDE, {"method": "GET", "path": "/x"}) == ("GET", "https://api.crm.example:443/v1/x")
    assert url_scope._resolve_kept.cache_info().currsize == 1


@pytest.mark.parametrize("plane", [range(0x10000), range(0x10000, 0x110000)])
def test_unsafe_characters_are_whitespace_controls_and_backslashes(plane: range) -> None:
    """The regex refuses exactly the characters the loop it replaced refused."""
    for code in plane:
        c = chr(code)
        assert bool(url_scope._UNSAFE.search(c)) == (c.isspace() or code < 0x20 or code == 0x7F or c == "\\"), hex(code)
