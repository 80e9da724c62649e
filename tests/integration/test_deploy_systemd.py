"""The systemd units in deploy/, checked by systemd itself (`systemd-analyze verify`, and `security`
for their exposure), and read: every command line they run is one our CLIs accept, the config and
data they use are where the example config and the units' own directories say, no secret in them."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edge_outbox import config_file
from edge_outbox.cli import main as edge_cli
from tests.support.cli_check import check_command_line
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy/systemd"
INSTALLED_BIN = "/opt/edge-outbox/bin/"  # where docs/deploy.md installs the programs
SERVICES = sorted(UNITS.glob("*.service"))


def unit(path: Path) -> configparser.RawConfigParser:
    """A unit file's sections; a key given twice keeps its last value (enough for the keys read here)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as installed here: ExecStart at this venv's programs (verify wants them to exist)."""
    directory = tmp_path_factory.mktemp("units")
    for path in UNITS.iterdir():
        text = path.read_text()
        assert INSTALLED_BIN in text or path.suffix == ".timer", path.name
        (directory / path.name).write_text(text.replace(INSTALLED_BIN, f"{Path(sys.executable).parent}/"))
    return directory


def systemd_analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("systemd-analyze", install="it comes with systemd")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def test_systemd_verifies_every_unit_without_a_warning(installed: Path) -> None:
    files = sorted(installed.iterdir())
    assert {f.name for f in files} >= {"edge-outbox.service", "cloud-bridge.service", "edge-outbox-health.timer"}
    result = systemd_analyze("verify", "--man=no", *files)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@pytest.mark.parametrize("name", [p.name for p in SERVICES])
def test_units_are_hardened(installed: Path, name: str) -> None:
    """systemd's own exposure score: 'OK' or better (2.0 of 10; an unhardened service scores 9.6)."""
    result = systemd_analyze("security", "--offline=yes", "--threshold=20", installed / name)
    assert result.returncode == 0, result.stdout[-600:]
    service = unit(UNITS / name)["Service"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["User"] not in {"root", "0"}


@pytest.mark.parametrize("name", [p.name for p in SERVICES])
def test_every_command_line_is_accepted_by_our_clis(name: str) -> None:
    service = unit(UNITS / name)["Service"]
    # ExecReload's `/bin/kill -HUP $MAINPID` is systemd's, held exactly by test_a_reload_of_the_outbox_is_its_sighup
    lines = [value for key, value in service.items() if key.startswith("Exec") and not value.startswith("/bin/kill ")]
    assert lines
    for line in lines:
        check_command_line(line.replace("%d", "/run/credentials/x"))


def test_both_programs_run_as_their_own_user_and_the_system_creates_it() -> None:
    sysusers = (ROOT / "deploy/sysusers.d/edge-outbox.conf").read_text().splitlines()
    declared = {line.split()[1] for line in sysusers if line.startswith("u ")}
    for path in SERVICES:
        service = unit(path)["Service"]
        assert service["User"] == service["Group"] and service["User"] in declared, path.name
        assert service["StateDirectory"] in {"edge-outbox", "cloud-bridge"}
        assert service["StateDirectory"] == service["User"]


def test_every_unit_keeps_its_state_directory_private() -> None:
    """systemd sets a StateDirectory='s mode at every start of a unit that names it (systemd.exec(5)), 0755 unless
    told: the health check, started each minute, opened /var/lib/edge-outbox (intents, the device's identity)
    to every local user, whatever edge-outbox.service had set."""
    for path in SERVICES:
        service = unit(path)["Service"]
        assert service.get("StateDirectoryMode") == "0700", path.name


def test_the_edge_reads_its_config_from_etc_and_keeps_data_in_its_state_directory() -> None:
    for name in ("edge-outbox.service", "edge-outbox-health.service"):
        service = unit(UNITS / name)["Service"]
        argv = service["ExecStart"].split()
        assert argv[1:3] == ["--config", f"/etc/{service['ConfigurationDirectory']}/config.toml"]
    # The example config, installed as that file, puts the data in the StateDirectory: every command.
    defaults = config_file.load(ROOT / "deploy/edge-outbox.toml", edge_cli, click.Context(edge_cli))
    state = unit(UNITS / "edge-outbox.service")["Service"]["StateDirectory"]
    assert {c: d["data_dir"] for c, d in defaults.items()} == dict.fromkeys(defaults, f"/var/lib/{state}")
    assert {"run", "status", "enroll"} <= set(defaults)


def test_the_bridge_keeps_data_in_its_state_directory_and_secrets_out_of_the_unit() -> None:
    service = unit(UNITS / "cloud-bridge.service")["Service"]
    argv = service["ExecStart"].split()
    assert argv[argv.index("--data-dir") + 1] == f"/var/lib/{service['StateDirectory']}"
    assert argv[argv.index("--config") + 1].startswith(f"/etc/{service['ConfigurationDirectory']}/")
    # Provider keys come from a root-only environment file; the TLS key as a credential, never a path
    # the service user must be able to read.
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/cloud-bridge/")
    assert not any(key.startswith("Environment") and key != "EnvironmentFile" for key in service)
    credential, source = service["LoadCredential"].split(":", 1)
    assert argv[argv.index("--tls-key") + 1] == f"%d/{credential}" and source.startswith("/etc/cloud-bridge/")


def test_the_docs_say_a_new_tls_key_takes_a_restart_when_the_unit_hands_it_over_as_a_credential() -> None:
    """systemd copies a LoadCredential= when the service starts, not on reload: a renewal with a new key (certbot's
    default) then fails at `systemctl reload` (new certificate, old key: refused). The docs promised a reload."""
    service = unit(UNITS / "cloud-bridge.service")["Service"]
    credential = service["LoadCredential"].split(":", 1)[0]
    assert f"--tls-key %d/{credential}" in service["ExecStart"]
    deploy = " ".join((ROOT / "docs/deploy.md").read_text().split())
    assert "takes `systemctl restart cloud-bridge`" in deploy and "--reuse-key" in deploy
    operations = " ".join((ROOT / "docs/operations.md").read_text().split())
    assert "a renewal that makes a new key takes a restart there, not a reload" in operations


def test_stop_is_sigterm_with_a_grace_period_and_restart_on_failure() -> None:
    for path in SERVICES:
        service = unit(path)["Service"]
        if service["Type"] == "oneshot":
            continue
        assert (service["KillSignal"], service["Restart"]) == ("SIGTERM", "on-failure"), path.name
        assert service["TimeoutStopSec"] == "30s"


def test_both_services_are_started_when_they_say_so() -> None:
    """Type=notify: each says READY=1 once it serves (tests/integration/test_service_notify.py)."""
    for name in ("cloud-bridge.service", "edge-outbox.service"):
        service = unit(UNITS / name)["Service"]
        assert (service["Type"], service["NotifyAccess"]) == ("notify", "main"), name


def test_a_reload_of_the_outbox_is_its_sighup() -> None:
    """edge_outbox/reload.py (tests/integration/test_edge_reload.py); without it `systemctl reload` was refused."""
    assert unit(UNITS / "edge-outbox.service")["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_the_health_timer_runs_the_health_check() -> None:
    timer = unit(UNITS / "edge-outbox-health.timer")
    assert timer["Install"]["WantedBy"] == "timers.target"
    health = unit(UNITS / "edge-outbox-health.service")["Service"]
    assert health["Type"] == "oneshot"
    assert health["ExecStart"].split()[3] == "status"
