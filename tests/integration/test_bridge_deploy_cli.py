"""The bridge's commands for deployment, as real processes: `--version` and `python -m cloud_bridge`,
`dev-certs --owner` (keys a container's user can read), and `health` against a running bridge."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import dockerfile
import pytest
import trustme

from tests.support.https_stub import https_answering
from tests.support.net import free_port
from tests.support.services import unavailable
from tests.support.stack import BridgeProcess

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
# The container image's user, as the Dockerfile sets it (USER uid:gid).
[IMAGE_USER] = [c.value[0] for c in dockerfile.parse_file(str(ROOT / "Dockerfile")) if c.cmd == "USER"]
IMAGE_UID = int(IMAGE_USER.split(":")[0])


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "argv", [[BIN / "cloud-bridge"], [sys.executable, "-m", "cloud_bridge"]], ids=["script", "module"]
)
def test_version_from_the_script_and_the_module(argv: list[str | Path]) -> None:
    result = run(*argv, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cloud-bridge, version {version('edge-outbox')}"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's own tmp_path is private to root)."""
    if os.geteuid() != 0:
        unavailable("giving files to another user needs root")
    path = Path(tempfile.mkdtemp(prefix="dev-certs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def readable_by(uid: int, path: Path) -> bool:
    result = subprocess.run(["cat", str(path)], user=uid, group=uid, capture_output=True, timeout=30, check=False)
    return result.returncode == 0 and result.stdout.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_dev_certs_owner_makes_the_key_readable_by_the_image_user_and_no_one_else(shared_dir: Path) -> None:
    plain = run(sys.executable, "-m", "cloud_bridge", "dev-certs", shared_dir / "plain")
    assert plain.returncode == 0, plain.stderr
    assert not readable_by(IMAGE_UID, shared_dir / "plain/server.key")  # what a new user hit in compose

    owned = run(sys.executable, "-m", "cloud_bridge", "dev-certs", shared_dir / "owned", "--owner", f"{IMAGE_UID}")
    assert owned.returncode == 0, owned.stderr
    key = shared_dir / "owned/server.key"
    assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (IMAGE_UID, 0o600)
    assert readable_by(IMAGE_UID, key)
    assert not readable_by(IMAGE_UID + 1, key)


def test_dev_certs_run_again_over_readable_key_files_leaves_the_new_keys_private(shared_dir: Path) -> None:
    """The key files were opened with O_TRUNC, which keeps the mode of a file already there: a run over key files
    that were 0644 wrote the new private keys where every local user could read them (and a reader that held
    the old file open read the new key through it)."""
    certs = shared_dir / "again"
    certs.mkdir(mode=0o755)
    held = {}
    for name in ("ca.key", "server.key"):
        (certs / name).write_text("an old key\n")
        (certs / name).chmod(0o644)
        held[name] = (certs / name).open("rb")  # opened before the run, as another user's reader could
    try:
        result = run(sys.executable, "-m", "cloud_bridge", "dev-certs", certs)
        assert result.returncode == 0, result.stderr
        for name, reader in held.items():
            assert (certs / name).stat().st_mode & 0o777 == 0o600, name
            assert not readable_by(IMAGE_UID + 1, certs / name), name
            assert reader.read() == b"an old key\n", name  # the new key is in a file of its own
            assert (certs / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    finally:
        for reader in held.values():
            reader.close()
    assert sorted(p.name for p in certs.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]


def test_dev_certs_owner_must_be_numbers(tmp_path: Path) -> None:
    result = run(sys.executable, "-m", "cloud_bridge", "dev-certs", tmp_path, "--owner", "outbox")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: --owner 'outbox': expected UID or UID:GID as numbers, e.g. 10001"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    work = tmp_path_factory.mktemp("health")
    made = run(sys.executable, "-m", "cloud_bridge", "dev-certs", work / "certs")
    assert made.returncode == 0, made.stderr
    certs = {"ca": work / "certs/ca.pem", "cert": work / "certs/server.pem", "key": work / "certs/server.key"}
    process = BridgeProcess(work, certs, smtp_port=free_port()).start()
    yield process
    process.stop()
    process.close()


def health(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(BIN / "cloud-bridge", "health", *args)


def test_health_passes_over_verified_tls(bridge: BridgeProcess) -> None:
    ca = bridge.certs["ca"]
    ok = health("--url", f"https://localhost:{bridge.http_port}/healthz", "--ca", ca)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"ok: https://localhost:{bridge.http_port}/healthz")
    # Probing 127.0.0.1 while checking the certificate for the name it was issued to.
    by_name = health("--url", f"https://127.0.0.1:{bridge.http_port}/healthz", "--ca", ca, "--server-name", "localhost")
    assert by_name.returncode == 0, by_name.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--server-name", "bridge.example"], "certificate is not valid for 'bridge.example'"),
        (["--server-name", "bridge.example"], "--server-name NAME checks it for NAME"),
        (["--ca", "OTHER_CA"], "certificate verify failed"),
        (["--ca", "OTHER_CA"], "--ca FILE trusts it"),
        (["--url", "https://localhost:{closed}/healthz"], "Connection refused"),
        (["--url", "http://localhost:{port}/healthz"], "the bridge serves /healthz over HTTPS only"),
        (["--url", "https://localhost:{port}/nothing"], "answered HTTP 404"),
    ],
    ids=[
        "wrong-name",
        "wrong-name-says-what-to-do",
        "other-ca",
        "other-ca-says-what-to-do",
        "nothing-listening",
        "plain-http",
        "not-found",
    ],
)
def test_health_fails_in_one_line(bridge: BridgeProcess, tmp_path: Path, args: list[str], says: str) -> None:
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    defaults = {"--url": f"https://127.0.0.1:{bridge.http_port}/healthz", "--ca": str(bridge.certs["ca"])}
    given = dict(zip(args[::2], args[1::2], strict=True))
    options = {**defaults, **given}
    options["--url"] = options["--url"].format(port=bridge.http_port, closed=free_port())
    if options["--ca"] == "OTHER_CA":
        options["--ca"] = str(other_ca)
    result = health(*[x for pair in options.items() for x in pair])
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert says in result.stderr


def test_health_of_an_unhealthy_node_says_why(tmp_path: Path) -> None:
    """A 503 printed "answered HTTP 503" and nothing of the problems /healthz names: the image's health log (what
    `docker inspect` shows) never said why."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    answer = b'{"status": "unhealthy", "problems": ["store not reachable: device registry: disk I/O error"]}'
    with https_answering(ca, 503, answer) as port:
        result = health("--url", f"https://127.0.0.1:{port}/healthz", "--ca", tmp_path / "ca.pem")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: https://127.0.0.1:{port}/healthz answered HTTP 503: store not reachable: device registry:"
        " disk I/O error\n"
    )
