"""Dashboard sessions and CSRF tokens: signed, expiring, bound to one session, refused when forged."""

from __future__ import annotations

import pytest

from cloud_bridge.dashboard.auth import SESSION_S, OperatorAuth
from intent_contract.passwords import hash_password

KEY = b"k" * 32
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def auth() -> OperatorAuth:
    return OperatorAuth({"alice": hash_password("correct horse")}, KEY)


def test_a_password_logs_in_only_the_operator_it_belongs_to(auth: OperatorAuth) -> None:
    assert auth.check_password("alice", "correct horse")
    assert not auth.check_password("alice", "wrong")
    assert not auth.check_password("mallory", "correct horse")


def test_a_session_names_its_operator_until_it_expires(auth: OperatorAuth) -> None:
    cookie = auth.session("alice", NOW)
    operator = auth.operator(cookie, NOW + 60)
    assert operator is not None and operator.name == "alice"
    assert auth.operator(cookie, NOW + SESSION_S + 1) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # a changed signature
        lambda c: "bWFsbG9yeTo5OTk5OTk5OTk5." + c.split(".")[1],  # another body, the old signature
        lambda c: "",
        lambda c: "no-dot-at-all",
        lambda c: c.split(".")[0] + ".\u00e9",  # non-ASCII: hmac.compare_digest raised TypeError on it
        lambda c: c.split(".")[0] + ".\udcff",  # a byte that is not UTF-8, as a server may decode it
    ],
)
def test_a_forged_or_altered_session_is_nobody(auth: OperatorAuth, forge: object) -> None:
    cookie = auth.session("alice", NOW)
    assert auth.operator(forge(cookie), NOW) is None  # type: ignore[operator]


def test_another_key_does_not_accept_our_sessions(auth: OperatorAuth) -> None:
    other = OperatorAuth({"alice": "x"}, b"o" * 32)
    assert other.operator(auth.session("alice", NOW), NOW) is None


def test_csrf_tokens_are_bound_to_their_session(auth: OperatorAuth) -> None:
    mine, theirs = auth.session("alice", NOW), auth.session("alice", NOW + 1)
    token = auth.csrf_token(mine)
    assert auth.csrf_ok(mine, token)
    assert not auth.csrf_ok(theirs, token)
    assert not auth.csrf_ok(mine, None)
    assert not auth.csrf_ok(None, token)
    assert not auth.csrf_ok(mine, "\u00e9")
    assert not auth.csrf_ok(mine, "\udcff")
    assert not auth.csrf_ok("\u00e9.00", token)


def test_a_short_key_or_a_bad_operator_name_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        OperatorAuth({}, b"short")
    with pytest.raises(ValueError, match="valid name"):
        OperatorAuth({"bad name": "x"}, KEY)


def test_a_new_password_ends_the_sessions_made_with_the_old_one(auth: OperatorAuth) -> None:
    """A password changed after a leak (a new hash in the config, a restart): a session taken before, with the
    same session key (shared by the nodes, so kept), named its operator for the rest of its 12 hours."""
    cookie = auth.session("alice", NOW)
    changed = OperatorAuth({"alice": hash_password("new horse")}, KEY)
    assert changed.operator(cookie, NOW + 60) is None
    assert changed.operator(changed.session("alice", NOW), NOW + 60) == auth.operator(cookie, NOW + 60)
