"""The compose files cannot run here (no Docker engine), so check what can be checked: every command
they run is one of our CLI commands with options that exist, and the example bridge config loads."""

from pathlib import Path

import click
import pytest
import yaml

from cloud_bridge.cli import main as bridge_cli
from cloud_bridge.settings import build_settings
from edge_outbox.cli import main as edge_cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = sorted((ROOT / "compose").glob("*.yml"))
CLIS: dict[str, click.Group] = {"edge-outbox": edge_cli, "cloud-bridge": bridge_cli}


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in COMPOSE:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            if "command" in service:
                found.append((f"{path.name}:{name}", service["command"]))
    return found


def test_there_are_compose_files_for_the_edge_and_the_cloud() -> None:
    assert {p.name for p in COMPOSE} >= {"edge.yml", "cloud.yml"}


@pytest.mark.parametrize(("where", "argv"), commands())
def test_compose_commands_use_real_commands_and_options(where: str, argv: list[str]) -> None:
    group = CLIS[argv[0]]
    command = group.commands[argv[1]]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    used = [token.split("=")[0] for token in argv[2:] if token.startswith("--")]
    unknown = [opt for opt in used if opt not in known]
    assert not unknown, f"{where}: options not accepted by `{argv[0]} {argv[1]}`: {unknown}"


def test_example_bridge_config_loads_without_secrets_in_it() -> None:
    env = {"SMTP_PASSWORD": "x", "CRM_TOKEN": "y"}
    settings = build_settings(data_dir=ROOT / "unused", env=env, config_path=ROOT / "compose/config/bridge.toml")
    assert settings.tenants["acme"]["policy"]["kinds"] == ["email.send", "http.request"]
    assert "change-me" not in (ROOT / "compose/config/bridge.toml").read_text()
