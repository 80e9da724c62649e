"""What can be checked of the compose files without an engine, in Python: every command line of ours
they run (service commands, health checks, the commands their comments tell an operator to run) is
accepted by our CLIs, and the example bridge config loads. tests/integration/test_compose_config.py
has Docker Compose itself render them."""

from pathlib import Path, PurePath

import pytest
import yaml

from cloud_bridge.settings import build_settings
from tests.support.cli_check import PROGRAMS, check_command_line, command_lines_in

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = sorted((ROOT / "compose").glob("*.yml"))


def command_lines() -> list[tuple[str, list[str]]]:
    found = []
    for path in COMPOSE:
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            where = f"{path.name}:{name}"
            if "command" in service and PurePath(service["command"][0]).name in PROGRAMS:
                found.append((where, service["command"]))  # (not a database's or balancer's own)
            test = service.get("healthcheck", {}).get("test", [])
            if test[:1] == ["CMD"] and PurePath(test[1]).name in PROGRAMS:
                found.append((f"{where} healthcheck", test[1:]))
        comments = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
        found += [(f"{path.name} comment", argv) for argv in command_lines_in(comments, prefix="docker compose")]
    return found


def test_there_are_compose_files_for_the_edge_and_the_cloud() -> None:
    assert {p.name for p in COMPOSE} >= {"edge.yml", "edge-attach.yml", "cloud.yml", "cloud-single.yml"}


def test_the_edge_files_document_enrollment() -> None:
    documented = {where for where, argv in command_lines() if argv[1:2] == ["enroll"]}
    assert documented >= {"edge.yml comment", "edge-attach.yml comment"}


@pytest.mark.parametrize("argv", [pytest.param(argv, id=where) for where, argv in command_lines()])
def test_compose_command_lines_are_accepted_by_our_clis(argv: list[str]) -> None:
    check_command_line(argv)


def test_example_bridge_config_loads_without_secrets_in_it() -> None:
    env = {"SMTP_PASSWORD": "x", "CRM_TOKEN": "y"}
    settings = build_settings(data_dir=ROOT / "unused", env=env, config_path=ROOT / "compose/config/bridge.toml")
    assert settings.config.tenants["acme"].policy.kinds == ["email.send", "http.request"]
    assert "change-me" not in (ROOT / "compose/config/bridge.toml").read_text()
