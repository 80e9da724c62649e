"""The bridge's config file read as a whole: every problem at once with where it is, unknown keys refused,
secrets read into values that never print, and the environment not kept."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from cloud_bridge.config import load_config, parse_section
from cloud_bridge.config.integrations import SmtpConfig
from cloud_bridge.errors import ConfigError
from cloud_bridge.settings import build_settings

CANARY = "canary-SECRET-9d2e"


def test_every_problem_of_the_file_is_reported_at_once_with_where_it_is() -> None:
    document = {
        "bridge": {"max_attempts": 0, "lease": "soon", "colour": "red"},
        "integrations": {
            "smtp": {"host": "relay", "username": "u", "password_env": "NOT_SET", "port": "25"},
            "http": {"credentials": {"crm": {"base_urls": ["ftp://x/"], "token_env": "CRM"}}},
            "fax": {},
        },
        "tenants": {"acme": {"policy": {"kinds": ["email.send", "fax.send"], "rate": {"email.send": {}}}}},
        "tenant": {},
    }
    with pytest.raises(ConfigError) as info:
        load_config(document, {"CRM": CANARY}, "bridge.toml")
    problems = info.value.detail.removeprefix("bridge.toml: ").split("; ")
    expected = [
        "bridge.max_attempts: Input should be greater than 0",
        "bridge.lease: not a duration",
        "bridge.colour: unknown key",
        "integrations.smtp.port: Input should be a valid integer",
        "integrations.http.credentials.crm: base_urls: only http and https URLs",
        "integrations.fax: unknown key",
        "tenants.acme.policy.kinds.1: unknown kind (known: ",
        'tenants.acme.policy.rate."email.send": needs exactly one of per_second, per_minute, per_hour',
        "tenant: unknown section",
    ]
    for wanted in expected:
        assert any(p.startswith(wanted) for p in problems), (wanted, problems)
    assert CANARY not in info.value.detail


def test_secrets_are_read_when_the_file_is_and_never_print(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(CANARY + "\n")
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[integrations.smtp]\nhost = "relay"\nusername = "u"\npassword_env = "SMTP_PW"\n'
        "[integrations.http.credentials.crm]\n"
        f'base_urls = ["https://api.example/"]\ntoken_file = "{token}"\n'
    )
    settings = build_settings(data_dir=tmp_path, env={"SMTP_PW": CANARY, "OTHER": CANARY}, config_path=config)
    smtp, http = settings.config.integrations.smtp, settings.config.integrations.http
    assert smtp is not None and http is not None
    assert smtp.needed("password").reveal() == CANARY
    assert http.credentials["crm"].needed("token").reveal() == CANARY
    for shown in (repr(settings), str(settings), settings.config.model_dump_json(), repr(settings.config.model_dump())):
        assert CANARY not in shown
    assert not hasattr(settings, "env")
    with pytest.raises(TypeError):
        pickle.dumps(settings.config)


@pytest.mark.parametrize(
    ("section", "env", "message"),
    [
        ({"host": "relay", "username": "u", "password": CANARY}, {}, "must not be written in the config file"),
        ({"host": "relay", "username": "u", "password_env": "PW", "password_file": "/x"}, {"PW": CANARY}, "only one"),
        ({"host": "relay", "username": "u"}, {}, "missing secret 'password'"),
        ({"host": "relay", "password_env": "PW"}, {"PW": CANARY}, "a password needs a username"),
        (
            {"host": "relay", "username": "u", "password_file": "/nonexistent/pw"},
            {},
            "password_file: cannot read the file it names",
        ),
    ],
)
def test_secret_errors_name_the_problem_never_the_value(
    section: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_section(SmtpConfig, section, env, "integrations.smtp")
    assert CANARY not in str(info.value) and CANARY not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"integrations": {"smtp": {"host": "relay", "username": "u", "password_env": CANARY}}}, "password_env: "),
        ({"bridge": {"lease": CANARY}}, "bridge.lease: not a duration"),
        ({"bridge": {"store": CANARY}}, "bridge: store must be sqlite:///DIR or postgresql://"),
        ({"tenants": {"acme": {"policy": {"kinds": [CANARY]}}}}, "tenants.acme.policy.kinds.0: unknown kind"),
        ({"tenants": {"acme": {"policy": {"notify_targets": [f"{CANARY}!"]}}}}, "notify_targets.0: not a valid name"),
        ({"integrations": {"smtp": {"host": "relay", "ca_file": CANARY}}}, "integrations.smtp.ca_file: cannot load"),
        (
            {
                "integrations": {
                    "http": {
                        "credentials": {
                            "crm": {"base_urls": ["https://a.example/"], "methods": [CANARY], "token_env": "T"}
                        }
                    }
                }
            },
            "integrations.http.credentials.crm.methods.0: not one of",
        ),
        (
            {
                "integrations": {
                    "http": {"credentials": {"crm": {"base_urls": ["https://a.example/"], "token_env": "T"}}}
                },
                "tenants": {
                    "acme": {"policy": {"http_scope": {"crm": {"base_urls": [f"https://b.example/{CANARY}/"]}}}}
                },
            },
            "tenants.acme.policy.http_scope.crm.base_urls: entry 0 not under the credential's own base_urls",
        ),
    ],
)
def test_a_secret_pasted_into_any_key_is_not_quoted_in_the_problem(document: dict[str, object], where: str) -> None:
    """Problems say where and what, never the value: a secret in the wrong key must reach no reload answer or log."""
    with pytest.raises(ConfigError) as info:
        load_config(document, {"T": "x"})
    assert where in info.value.detail
    assert CANARY[:10] not in info.value.detail  # not even a start of it (the store's used to show 12 characters)


def test_dashboard_operators_need_scrypt_hashes_and_the_session_key_is_long_and_never_written() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {"dashboard": {"operators": {"alice": CANARY, "bad name!": "scrypt$1"}, "session_key_env": "KEY"}},
            {"KEY": "short"},
        )
    problems = info.value.detail
    assert "dashboard.operators.alice: must be a hash from `cloud-bridge dashboard hash-password`" in problems
    assert "dashboard.operators.bad name!" in problems
    assert CANARY not in problems
    with pytest.raises(ConfigError, match="the session key must be at least 32 characters"):
        load_config({"dashboard": {"session_key_env": "KEY"}}, {"KEY": "short"})
    with pytest.raises(ConfigError, match="'session_key' must not be written in the config file"):
        load_config({"dashboard": {"session_key": "k" * 40}}, {})
    config = load_config(
        {"dashboard": {"operators": {"alice": "scrypt$x"}, "session_key_env": "KEY"}}, {"KEY": "k" * 40}
    )
    assert config.dashboard.enabled and config.dashboard.key_bytes() == b"k" * 40
    assert not load_config({}, {}).dashboard.enabled
