"""build_integrations from a TOML [integrations] table: every kind, secrets from env and files."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cloud_bridge.config import parse_section
from cloud_bridge.config.integrations import IntegrationsConfig
from cloud_bridge.errors import ConfigError, PermanentError
from cloud_bridge.integrations import Integration, build_integrations
from cloud_bridge.integrations.base import Job

CANARY = "canary-SECRET-5f3a"

TOML = """
[integrations.smtp]
host = "127.0.0.1"
port = 2525
security = "starttls"
username = "apikey"
password_env = "SMTP_PASSWORD"
ca_file = "{ca}"
concurrency = 3

[integrations.sms]
base_url = "https://127.0.0.1:8443"
account_sid = "AC123"
auth_token_file = "{token_file}"
from = "+15550000000"

[integrations.http]
concurrency = 5
allow_private_hosts = ["127.0.0.1"]
[integrations.http.credentials.crm]
base_urls = ["https://api.crm.example/v1/"]
methods = ["GET", "POST"]
auth = "bearer"
token_env = "CRM_TOKEN"

[integrations.notify]
[integrations.notify.targets.oncall]
urls_env = "ONCALL_APPRISE_URLS"
"""


@pytest.fixture
def config(tmp_path: Path, server_cert_files: dict[str, Path]) -> dict[str, object]:
    token_file = tmp_path / "twilio-token"
    token_file.write_text(CANARY + "\n")
    document = tomllib.loads(TOML.format(ca=server_cert_files["ca"], token_file=token_file))
    integrations = document["integrations"]
    assert isinstance(integrations, dict)
    return integrations


def build(table: object, env: dict[str, str]) -> dict[str, Integration]:
    return build_integrations(parse_section(IntegrationsConfig, table, env, "integrations"))


ENV = {"SMTP_PASSWORD": CANARY, "CRM_TOKEN": CANARY, "ONCALL_APPRISE_URLS": f"json://u:{CANARY}@127.0.0.1:9/x"}


async def test_builds_every_configured_kind(config: dict[str, object]) -> None:
    built = build(config, ENV)
    try:
        assert sorted(built) == ["email.send", "http.request", "notify", "sms.send"]
        assert {k: i.kind for k, i in built.items()} == {k: k for k in built}
        assert (built["email.send"].concurrency, built["http.request"].concurrency) == (3, 5)
        assert (built["sms.send"].concurrency, built["notify"].concurrency) == (4, 2)
        for integration in built.values():
            assert CANARY not in repr(integration)
            assert CANARY not in repr(getattr(integration, "__dict__", {}))
    finally:
        for integration in built.values():
            await integration.aclose()


async def test_only_configured_kinds(config: dict[str, object]) -> None:
    built = build({"smtp": config["smtp"]}, ENV)
    assert list(built) == ["email.send"]
    assert build({}, {}) == {}


async def test_http_integration_refuses_a_credential_policy_did_not_check(config: dict[str, object]) -> None:
    built = build({"http": config["http"]}, ENV)
    job = Job("d", "t", "i", "http.request", {"credential": "crm", "method": "GET", "path": "/../x"}, 1, {})
    try:
        with pytest.raises(PermanentError, match="URL refused"):
            await built["http.request"].execute(job)
    finally:
        await built["http.request"].aclose()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda c: c.update({"fax": {}}), "integrations.fax: unknown key"),
        (lambda c: c["smtp"].pop("password_env"), "missing secret"),
        (lambda c: c["smtp"].update({"password": CANARY}), "must not be written"),
        (lambda c: c["http"]["credentials"]["crm"].update({"token_env": "NOPE"}), "not set"),
        (lambda c: c["http"]["credentials"]["crm"].update({"auth": "header", "header": "X Api"}), "header name"),
        (lambda c: c["sms"].update({"auth_token_file": "/nonexistent"}), "cannot read"),
        (lambda c: c.update({"notify": "oncall"}), "integrations.notify: Input should be a valid dictionary"),
    ],
)
def test_config_errors_name_the_problem_not_the_secret(config: dict[str, object], mutate: object, match: str) -> None:
    mutate(config)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=match) as info:
        build(config, ENV)
    assert CANARY not in str(info.value)
