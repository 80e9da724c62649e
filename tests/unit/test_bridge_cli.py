"""The `cloud-bridge` CLI: help everywhere, device commands, audit/status, dev-certs, settings errors."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509
from prometheus_client import CollectorRegistry

from cloud_bridge import fleet_cli
from cloud_bridge.cli import main
from cloud_bridge.errors import ConfigError
from cloud_bridge.fleet_desk import FleetDesk
from cloud_bridge.fleet_schema import FLEET_DB, migrate_fleet_file
from cloud_bridge.fleet_sql import sqlite_fleet
from cloud_bridge.registry_sqlite import SqliteRegistry
from cloud_bridge.settings import BridgeSettings, HostPort, build_settings
from intent_contract.console import plain_console
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.device_wire import Diagnosis, ErrorLine, FailingKind, encode_health
from tests.support.fleet import sample_report


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found.extend(_walk(sub, (*path, name)))
    return found


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in _walk(main):
        if not (command.help or "").strip():
            missing.append(" ".join(path) or "cloud-bridge")
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert missing == []
    assert len(_walk(main)) >= 9  # run, dev-certs, devices (+4), audit, status


@pytest.mark.parametrize("path", [p for p, _ in _walk(main)])
def test_help_runs(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _run(*args: str, data_dir: Path) -> click.testing.Result:
    return CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])


def test_devices_enroll_code_ls_show_revoke(tmp_path: Path) -> None:
    result = _run("devices", "enroll-code", "--tenant", "acme", "--name", "boiler-7", "--json", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    code = json.loads(result.output)["code"]
    assert len(code) >= 22  # >= 128 bits, url-safe base64
    registry = SqliteRegistry(tmp_path / "registry.db")
    device = registry.redeem(code, public_key_pem(generate_private_key_pem()), now=time.time())
    # only the hash is stored
    assert code.encode() not in (tmp_path / "registry.db").read_bytes()

    listing = json.loads(_run("devices", "ls", "--json", data_dir=tmp_path).output)
    assert [d["device_id"] for d in listing] == [device.device_id]
    table = _run("devices", "ls", data_dir=tmp_path).output
    assert device.device_id in table
    assert "never seen" in table
    shown = json.loads(_run("devices", "show", device.device_id, "--json", data_dir=tmp_path).output)
    assert shown["tenant"] == "acme"
    assert shown["revoked_at"] is None

    revoked = _run("devices", "revoke", device.device_id, "--json", data_dir=tmp_path)
    assert revoked.exit_code == 0
    assert json.loads(revoked.output)["revoked_at"] is not None
    assert registry.revocation_counter() == 1
    assert "revoked" in _run("devices", "ls", data_dir=tmp_path).output


async def test_a_devices_text_is_printed_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rich reads `[...]` in a string as markup: a device's version `[/x]` (a closing tag with nothing open)
    failed `devices ls` for the whole fleet, and `show` and `diagnose`, with a MarkupError."""
    enrolled = _run("devices", "enroll-code", "--tenant", "acme", "--name", "boiler-7", "--json", data_dir=tmp_path)
    registry = SqliteRegistry(tmp_path / "registry.db")
    device = registry.redeem(
        json.loads(enrolled.output)["code"], public_key_pem(generate_private_key_pem()), time.time()
    )
    report = sample_report(software="[/x]", last_error=ErrorLine(1000, "[/y]", "[bold]d"))
    migrate_fleet_file(tmp_path / FLEET_DB)
    fleet = sqlite_fleet(tmp_path / FLEET_DB)
    desk = FleetDesk(fleet, node="n1", devices=registry.all_devices, metrics=CollectorRegistry())
    desk.submit(device.device_id, "health", encode_health(report))
    await desk.flush(held=())
    fleet.close()
    listing = _run("devices", "ls", data_dir=tmp_path)
    assert listing.exit_code == 0, listing.output
    assert "[/x]" in listing.output and "[/y]" in listing.output
    shown = _run("devices", "show", device.device_id, data_dir=tmp_path)
    assert shown.exit_code == 0, shown.output
    assert "[/x]" in shown.output
    failing = (FailingKind("email.send", "[/z]", 2),)
    diagnosis = Diagnosis("r", report, (ErrorLine(5, "[/c]", "[/d]"),), failing, 60_000, "[b]", "mqtt")
    fleet_cli._print_diagnosis(plain_console(), diagnosis, time.time(), time.time())
    printed = capsys.readouterr().out
    assert all(text in printed for text in ("[/z]", "[/c]", "[/d]", "[b]")), printed


def test_unknown_device_is_a_one_line_error(tmp_path: Path) -> None:
    for args in (("devices", "show", "nope"), ("devices", "revoke", "nope")):
        result = _run(*args, data_dir=tmp_path)
        assert result.exit_code == 1
        assert result.output.strip().startswith("Error:")
        assert len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def test_bad_names_and_ttl_are_clean_errors(tmp_path: Path) -> None:
    result = _run("devices", "enroll-code", "--tenant", "a b", "--name", "x", data_dir=tmp_path)
    assert result.exit_code == 1
    assert "Error:" in result.output
    result = _run("devices", "enroll-code", "--tenant", "acme", "--name", "x", "--ttl", "soon", data_dir=tmp_path)
    assert result.exit_code == 1
    assert "not a duration" in result.output


def test_audit_and_status_on_an_empty_bridge(tmp_path: Path) -> None:
    assert _run("db", "upgrade", data_dir=tmp_path).exit_code == 0  # a store with nothing in it yet
    result = _run("audit", "--json", "--since", "2h", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []
    result = _run("audit", "--since", "2026-01-01T00:00:00Z", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    result = _run("audit", "--since", "yesterday-ish", data_dir=tmp_path)
    assert result.exit_code == 1
    status = json.loads(_run("status", "--json", data_dir=tmp_path).output)
    assert status == {"devices": {"active": 0, "revoked": 0}, "events": {}}


def test_dev_certs_make_a_ca_and_a_server_cert_that_verifies(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dev-certs", str(tmp_path / "certs"), "--host", "bridge.example"])
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "bridge.example"} <= set(sans.get_values_for_type(x509.DNSName))
    assert (tmp_path / "certs" / "server.key").stat().st_mode & 0o077 == 0
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
    assert client.cert_store_stats()["x509_ca"] == 1


def test_settings_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[bridge]\naudience = "aud-x"\nmax_attempts = 3\n'
        '[integrations.smtp]\nhost = "smtp.example.com"\nusername = "apikey"\npassword_env = "SMTP_PASSWORD"\n'
        '[tenants.acme.policy]\nkinds = ["email.send"]\n'
    )
    settings = build_settings(
        data_dir=tmp_path, env={"SMTP_PASSWORD": "hunter2-canary"}, config_path=config, listen="127.0.0.1:9883"
    )
    assert settings.audience == "aud-x"
    assert settings.max_attempts == 3
    assert settings.listen == HostPort("127.0.0.1", 9883)
    smtp = settings.config.integrations.smtp
    assert smtp is not None
    assert smtp.host == "smtp.example.com"
    assert smtp.secret("password") is not None
    assert "hunter2-canary" not in repr(settings)
    assert not hasattr(settings, "env")  # the environment is read, not kept
    assert settings.configured


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[bridge\n", "not valid TOML"),
        ("[bridges]\n", "unknown section"),
        ("[bridge]\nmax_attempt = 3\n", "unknown key"),
        ("[bridge]\nmax_attempts = 0\n", "max_attempts"),
        ('[bridge]\nretry_base = "1"\n', "retry_base"),
    ],
)
def test_settings_errors_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_settings(data_dir=tmp_path, env={}, config_path=config)


def test_settings_defaults_and_listen_parsing(tmp_path: Path) -> None:
    settings = BridgeSettings(data_dir=tmp_path)
    assert not settings.configured
    assert settings.listen.port == 8883
    assert settings.http_listen.port == 8443
    assert HostPort.parse(":8883") == HostPort("0.0.0.0", 8883)
    assert HostPort.parse("[::1]:8883") == HostPort("::1", 8883)
    with pytest.raises(ConfigError):
        HostPort.parse("localhost")
    with pytest.raises(ConfigError):
        build_settings(data_dir=tmp_path, env={}, config_path=tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        BridgeSettings(data_dir=tmp_path, tls_cert=tmp_path / "c.pem")
