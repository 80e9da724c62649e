"""The compose files as Docker Compose v2 itself reads them (`config`, which needs no engine): valid
against the Compose spec, the repository's files they mount present, and the edge's enrollment,
as the files' comments document it, able to find the bridge's CA inside the container."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import pytest

from tests.support.cli_check import program_index, shell_lines
from tests.support.compose import compose_command, render

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = sorted((ROOT / "compose").glob("*.yml"))
EDGE = [ROOT / "compose/edge.yml", ROOT / "compose/edge-attach.yml"]
# compose/cloud.yml reads an env_file (.env) that nothing makes: `config` fails. Branch `pg` rewrites
# that file; strict, so that this mark must go once it renders.
NEEDS_FIXING: dict[str, str] = {}  # file name -> why it cannot render yet (a strict xfail)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return compose_command()


def rendered(compose: list[str], path: Path) -> dict[str, Any]:
    result = render(compose, path)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.name, marks=[pytest.mark.xfail(reason=NEEDS_FIXING[p.name], strict=True)])
        if p.name in NEEDS_FIXING
        else pytest.param(p, id=p.name)
        for p in COMPOSE
    ],
)
def test_compose_renders_the_file(compose: list[str], path: Path) -> None:
    document = rendered(compose, path)
    assert document["services"]
    for name, service in document["services"].items():
        assert "build" in service or "image" in service, name


def image_env(target: str) -> dict[str, str]:
    """The ENV of the Dockerfile's stages up to `target` (each stage here builds on the one before)."""
    env: dict[str, str] = {}
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
        if command.cmd == "FROM" and command.value[-1] == target:
            break
    return env


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in EDGE])
def test_bind_mounts_of_the_edge_files_are_in_the_repository(compose: list[str], path: Path) -> None:
    """A missing bind source becomes an empty directory owned by root: a file mount breaks, a site dir is hidden."""
    for name, service in rendered(compose, path)["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{path.name}:{name} mounts {volume['source']}, not in the repo"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in EDGE])
def test_documented_enrollment_finds_its_ca_and_writes_to_the_outbox_volume(compose: list[str], path: Path) -> None:
    services = rendered(compose, path)["services"]
    comments = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
    lines = [(words, program_index(words)) for words in shell_lines(comments, prefix="docker compose")]
    enrolls = [(words[start - 1], words[start:]) for words, start in lines if start and words[start + 1] == "enroll"]
    assert enrolls, f"{path.name} documents no enrollment"
    for service_name, argv in enrolls:  # docker compose ... run [OPTIONS] SERVICE edge-outbox enroll ...
        service = services[service_name]
        ca = PurePosixPath(argv[argv.index("--ca") + 1])
        binds = [v for v in service["volumes"] if v["type"] == "bind" and ca.is_relative_to(v["target"])]
        assert binds, f"{path.name}: --ca {ca} is in no directory mounted from the host into {service_name}"
        host_dir = Path(binds[0]["source"])
        assert host_dir.is_relative_to(ROOT / "compose") and (host_dir / "README.md").exists()
        assert binds[0].get("read_only"), "the site's files are mounted read-only"
        # Enrollment and `run` both use the image's data directory, which is the outbox's volume.
        assert "--data-dir" not in argv and "--data-dir" not in service["command"]
        data_dir = image_env(service["build"].get("target", "edge"))["EDGE_OUTBOX_DATA_DIR"]
        assert any(v["type"] == "volume" and v["target"] == data_dir for v in service["volumes"])


def test_attached_mosquitto_keeps_its_queue_in_a_volume(compose: list[str]) -> None:
    """The outbox's persistent session queues in Mosquitto while the outbox restarts: that queue needs a volume."""
    conf = dict(
        line.split(None, 1) for line in (ROOT / "compose/mosquitto.conf").read_text().splitlines() if line[:1].isalpha()
    )
    assert conf["persistence"].strip() == "true"
    location = conf["persistence_location"].strip().rstrip("/")
    mosquitto = rendered(compose, ROOT / "compose/edge-attach.yml")["services"]["mosquitto"]
    assert any(v["type"] == "volume" and v["target"].rstrip("/") == location for v in mosquitto["volumes"])
    assert mosquitto["healthcheck"]["test"][0] == "CMD"
