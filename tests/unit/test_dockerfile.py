"""The Dockerfile, read with Docker's own parser (no engine runs here to build it): two targets from
one base, each with its ports, a command and a health check of ours, a numeric non-root user whose
id the docs and `dev-certs --owner` name, and the data directory every command finds by itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from cloud_bridge.cli import main as bridge_cli
from cloud_bridge.settings import HostPort
from tests.support.cli_check import check_command_line

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, list[dockerfile.Command]]:
    found: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] = []
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            current = []
            found[command.value[-1]] = current
        current.append(command)
    return found


def only(stage: str, instruction: str) -> dockerfile.Command:
    [command] = [c for c in stages()[stage] if c.cmd == instruction]
    return command


def test_edge_is_the_default_target_and_bridge_the_other() -> None:
    assert list(stages()) == ["base", "bridge", "edge"]  # the last stage is what a plain build makes
    assert all(stages()[name][0].value[0] == "base" for name in ("bridge", "edge"))


@pytest.mark.parametrize(
    ("stage", "program", "ports"), [("edge", "edge-outbox", {"1883"}), ("bridge", "cloud-bridge", {"8883", "8443"})]
)
def test_each_target_exposes_its_ports_runs_its_program_and_checks_its_health(
    stage: str, program: str, ports: set[str]
) -> None:
    assert set(only(stage, "EXPOSE").value) == ports
    cmd = only(stage, "CMD")
    assert cmd.json, "exec form, so that SIGTERM reaches the program"
    assert list(cmd.value[:2]) == [program, "run"]
    check_command_line(cmd.value)
    listening = {str(HostPort.parse(cmd.value[i + 1]).port) for i, v in enumerate(cmd.value) if v.endswith("listen")}
    assert listening == ports
    health = only(stage, "HEALTHCHECK")
    assert health.json and health.value[0] == "CMD"
    check_command_line(health.value[1:])
    assert health.value[2] in {"status", "health"}


def test_the_bridge_health_check_asks_the_port_it_listens_on() -> None:
    health = list(only("bridge", "HEALTHCHECK").value)
    url = health[health.index("--url") + 1]
    cmd = list(only("bridge", "CMD").value)
    assert url == f"https://localhost:{HostPort.parse(cmd[cmd.index('--http-listen') + 1]).port}/healthz"


def test_the_image_user_is_numeric_and_named_where_keys_are_made_for_it() -> None:
    user = only("base", "USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid == uid, "numeric, so that runAsNonRoot-style checks can see it is not root"
    owner_help = next(p for p in bridge_cli.commands["dev-certs"].params if p.name == "owner").help or ""
    assert f"is {uid}" in owner_help
    assert f"--owner {uid}" in (ROOT / "docs/deploy.md").read_text()


def test_every_command_finds_the_data_volume_without_flags() -> None:
    env = dict(zip(*[iter(only("base", "ENV").value)] * 2, strict=True))
    [volume] = only("base", "VOLUME").value
    assert env["EDGE_OUTBOX_DATA_DIR"] == env["CLOUD_BRIDGE_DATA_DIR"] == volume


def built_services() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "compose").glob("*.yml")):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            if "build" in service:
                found.append((f"{path.name}:{name}", service))
    return found


# compose/cloud.yml builds the default target (the edge's, whose health check is `edge-outbox
# status`). Branch `pg` rewrites that file; strict, so that the mark must go once it is fixed.
WRONG_TARGET: dict[str, str] = {}  # service -> why it builds another target (a strict xfail)


@pytest.mark.parametrize(
    "service",
    [
        pytest.param(service, id=where, marks=[pytest.mark.xfail(reason=WRONG_TARGET[where], strict=True)])
        if where in WRONG_TARGET
        else pytest.param(service, id=where)
        for where, service in built_services()
    ],
)
def test_each_compose_service_builds_the_target_made_for_its_program(service: dict[str, Any]) -> None:
    """Else it runs with the other side's ports and health check."""
    build = service["build"]
    target = build.get("target") if isinstance(build, dict) else None
    assert target in stages(), f"build target {target!r} is not a stage of the Dockerfile"
    assert list(only(target, "CMD").value[:1]) == service["command"][:1]


def test_keys_and_secrets_stay_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"**/.env", "**/*.key"} <= ignored
