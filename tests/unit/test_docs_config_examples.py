"""The bridge configs the pages show whole (a block with its integrations and its tenants) and the example
config docs/deploy.md installs are configs the bridge takes, each kind a tenant allows has an integration to
serve it, and each tenant they allow `email.send` can send one: a copied example must not fail every intent
of a kind (`no_integration`) or refuse every email (`policy_from`, for want of an `email_from`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.config import load_config
from cloud_bridge.integrations import _SECTIONS
from cloud_bridge.policy import DeviceRef

ROOT = Path(__file__).resolve().parents[2]


def examples() -> list[tuple[str, dict[str, Any]]]:
    found = [("compose/config/bridge.toml", tomllib.loads((ROOT / "compose/config/bridge.toml").read_text()))]
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.DOTALL):
            if re.search(r"^\[integrations\.", block, re.M) and re.search(r"^\[tenants\.", block, re.M):
                found.append((page.name, tomllib.loads(block)))
    return found


def variables(table: dict[str, Any]) -> list[str]:
    """The environment variables a config's `*_env` keys name, at any depth."""
    found = []
    for key, value in table.items():
        if isinstance(value, dict):
            found += variables(value)
        elif key.endswith("_env"):
            found.append(value)
    return found


def test_the_pages_show_whole_configs() -> None:
    assert "tenants.md" in {name for name, _ in examples()}


@pytest.mark.parametrize(("name", "document"), examples(), ids=[name for name, _ in examples()])
def test_an_example_config_loads_and_each_tenant_can_send_the_email_it_allows(
    name: str, document: dict[str, Any]
) -> None:
    # The secrets' variables set; *_file secrets are a node's and not read here (node_secrets=False).
    env = dict.fromkeys(variables(document), "secret")
    config = load_config(document, env, name, node_secrets=False)
    engine = config.policy()
    for tenant, table in document["tenants"].items():
        policy = table.get("policy", {})
        # Every kind it allows has an integration, the tenant's own or the vendor's: else each ends no_integration.
        served = {
            kind
            for section, (kind, *_) in _SECTIONS.items()
            if getattr(config.integrations, section) or getattr(config.tenants[tenant].integrations, section)
        }
        assert set(policy.get("kinds", [])) <= served, (tenant, "no integration", set(policy["kinds"]) - served)
        if "email.send" not in policy.get("kinds", []):
            continue
        email = {"to": f"ops@{policy['email_domains'][0]}", "subject": "Alarm", "text": "Boiler 3 hot"}
        decision = engine.check(DeviceRef("01DEVICE", tenant, "boiler-7"), "email.send", email)
        assert decision.allowed, (tenant, decision.code, decision.detail)
