"""Secrets come from the environment or a file, are never plain in the config, and never print."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.secrets import Secret, resolve_secret

CANARY = "canary-SECRET-5f3a"


def test_secret_is_masked() -> None:
    secret = Secret(CANARY)
    assert secret.reveal() == CANARY
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]), repr({"k": secret})):
        assert CANARY not in text
    assert repr(secret) == "Secret('***')"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_from_env() -> None:
    secret = resolve_secret({"password_env": "PW"}, "password", {"PW": CANARY})
    assert secret is not None
    assert secret.reveal() == CANARY


def test_from_file_strips_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(CANARY + "\n")
    secret = resolve_secret({"password_file": str(path)}, "password", {})
    assert secret is not None
    assert secret.reveal() == CANARY


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"password": CANARY}, "must not be written"),
        ({"password_env": "PW", "password_file": "/x"}, "only one"),
        ({"password_env": "MISSING"}, "not set"),
        ({"password_env": "EMPTY"}, "not set"),
        ({"password_file": "/nonexistent/secret"}, "cannot read"),
        ({}, "missing secret"),
    ],
)
def test_errors_never_show_the_value(section: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        resolve_secret(section, "password", {"PW": CANARY, "EMPTY": ""})
    assert CANARY not in str(info.value)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"password_env": CANARY}, "password_env"),  # the secret written where its variable's name goes
        ({"password_env": "NOT_SET"}, "password_env"),
        ({"password_file": f"/nonexistent/{CANARY}"}, "password_file"),
    ],
)
def test_errors_name_the_key_never_what_it_holds(section: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_secret(section, "password", {"PW": "x"})
    assert str(info.value).startswith(f"{key}: ")
    assert CANARY not in str(info.value) and "NOT_SET" not in str(info.value)


def test_optional_secret_may_be_absent() -> None:
    assert resolve_secret({}, "password", {}, required=False) is None
