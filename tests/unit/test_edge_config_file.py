"""The edge's config file: keys are `run` options; flags and environment win; every bad key is named."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge_outbox import process
from edge_outbox.cli import main
from edge_outbox.errors import ConfigError
from edge_outbox.settings import OutboxSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[OutboxSettings]:
    """`run` builds its settings and hands them to serve(); keep them instead of serving."""
    seen: list[OutboxSettings] = []

    async def fake_serve(settings: OutboxSettings, *_: Any, **__: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(process, "serve", fake_serve)
    # `run` sets up logging for the process, as a CLI does; give the test process its own back.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(root, "level", root.level)
    return seen


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_run_takes_its_options_from_the_file_and_flags_win(tmp_path: Path, captured: list[OutboxSettings]) -> None:
    config = write(
        tmp_path,
        f'data_dir = "{tmp_path / "lib"}"\nlisten = "127.0.0.1:18999"\nmax_queue_items = 5\n'
        'max_queue_bytes = "2M"\nretention = "2d"\nno_forward = true\n',
    )
    result = CliRunner().invoke(main, ["--config", str(config), "run", "--max-queue-items", "7"])
    assert result.exit_code == 0, result.output
    (settings,) = captured
    assert settings.data_dir == tmp_path / "lib"
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 18999)
    assert settings.max_queue_items == 7  # the flag
    assert settings.max_queue_bytes == 2 << 20
    assert settings.retention_s == 2 * 86400
    assert settings.forward is False


def test_environment_wins_over_the_file(tmp_path: Path, captured: list[OutboxSettings]) -> None:
    config = write(tmp_path, f'data_dir = "{tmp_path / "from-file"}"\n')
    result = CliRunner().invoke(
        main, ["run"], env={"EDGE_OUTBOX_CONFIG": str(config), "EDGE_OUTBOX_DATA_DIR": str(tmp_path / "from-env")}
    )
    assert result.exit_code == 0, result.output
    assert captured[0].data_dir == tmp_path / "from-env"


def test_data_dir_from_the_file_applies_to_the_ops_commands(tmp_path: Path) -> None:
    config = write(tmp_path, f'data_dir = "{tmp_path / "nowhere"}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert f"no outbox database in {tmp_path / 'nowhere'}" in result.output


def test_every_bad_key_is_reported_at_once_with_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'max_queue_items = "many"\nlisten_port = 1\nattach_password = "x"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    message = result.output
    assert str(config) in message
    assert "max_queue_items = 'many'" in message
    assert "listen_port: not an option" in message
    assert "attach_password: not an option" in message  # secrets stay out of files
    assert "Traceback" not in message


def test_values_of_the_wrong_toml_type_are_reported_not_raised(tmp_path: Path) -> None:
    """A number for a path was taken as a file descriptor ("Bad file descriptor: 5"), a number for a flag
    was an AttributeError: each a traceback."""
    text = 'data_dir = 5\nno_forward = 2\nforward_window = "02:00-04:00"\nlisten = ["a"]\n'
    result = CliRunner().invoke(main, ["--config", str(write(tmp_path, text)), "status"])
    assert result.exit_code == 1, result.output
    message = result.output
    assert "data_dir = 5: must be a string (a path)" in message
    assert "no_forward = 2: must be true or false" in message
    assert "forward_window = '02:00-04:00': must be a list" in message
    assert "listen = ['a']: must be a single value" in message
    assert "Traceback" not in message


def test_bad_values_run_reads_itself_are_reported_with_the_others_and_no_password(tmp_path: Path) -> None:
    """Durations and the values `run` parses in its body (listen, metrics, sizes, windows) were not checked when
    the file was read: click stopped at the first (`Invalid value for '--retention'`, naming a flag the operator
    never gave), and each start showed the next one. An attach URL is never echoed: it may hold a password."""
    text = (
        'retention = "7x"\nmax_queue_bytes = "2Q"\nmetrics = "127.0.0.1:port"\nforward_window = ["25:00-01:00"]\n'
        'session_expiry = "soon"\nattach = ["mqtt://user:hunter2pw@broker:1883"]\n'
    )
    result = CliRunner().invoke(main, ["--config", str(write(tmp_path, text)), "run"])
    assert result.exit_code == 1, result.output
    message = result.output
    assert message.count("Error:") == 1 and str(tmp_path / "config.toml") in message
    for named in (
        "retention = '7x': not a duration",
        "max_queue_bytes = '2Q': '2Q' is not a size",
        "metrics = '127.0.0.1:port': --metrics '127.0.0.1:port': port must be a number",
        "forward_window = ['25:00-01:00']: --forward-window '25:00-01:00': not a time of day",
        "session_expiry = 'soon': not a duration",
        "attach: must be a single value",
    ):
        assert named in message, named
    assert "hunter2pw" not in message and "Invalid value for" not in message


def test_a_broken_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(write(tmp_path, "data_dir = \n")), "status"])
    assert result.exit_code == 1
    assert "is not valid TOML" in result.output


@pytest.mark.parametrize("field", ["max_queue_items", "max_queue_bytes"])
def test_a_negative_queue_limit_names_its_flag(field: str) -> None:
    """It said "queue limits cannot be negative", not which of the two."""
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{flag} cannot be negative"):
        OutboxSettings(**{field: -1})  # type: ignore[arg-type]


def test_every_key_is_its_flags_long_name(tmp_path: Path, captured: list[OutboxSettings]) -> None:
    """The rule the page and the example config give: `--users` is `users`. It was `users_file` (the option's
    name in the code), so `users = ...`, as deploy/edge-outbox.toml and docs/deploy.md wrote it, stopped the
    outbox at start: `users: not an option of edge-outbox run`."""
    run = main.commands["run"]
    assert {p.name for p in run.params} == {p.opts[0].removeprefix("--").replace("-", "_") for p in run.params}
    users = tmp_path / "users"
    users.write_text(CliRunner().invoke(main, ["hash-password", "--app", "hvac", "--password", "pw"]).output)
    result = CliRunner().invoke(main, ["--config", str(write(tmp_path, f'users = "{users}"\n')), "run"])
    assert result.exit_code == 0, result.output
    assert set(captured[0].users) == {"hvac"}


def test_the_keys_earlier_name_users_file_is_still_read(tmp_path: Path, captured: list[OutboxSettings]) -> None:
    users = tmp_path / "users"
    users.write_text(CliRunner().invoke(main, ["hash-password", "--app", "hvac", "--password", "pw"]).output)
    result = CliRunner().invoke(main, ["--config", str(write(tmp_path, f'users_file = "{users}"\n')), "run"])
    assert result.exit_code == 0, result.output
    assert set(captured[0].users) == {"hvac"}
    both = write(tmp_path, f'users = "{users}"\nusers_file = "{users}"\n')
    result = CliRunner().invoke(main, ["--config", str(both), "run"])
    assert result.exit_code == 1
    assert "users_file: the earlier name of users; give only users" in result.output


def test_every_key_the_example_config_shows_commented_out_is_read(tmp_path: Path) -> None:
    """deploy/edge-outbox.toml's commented keys are the ones an operator uncomments: each must be a key the file
    takes (checked here with its value, paths aside)."""
    example = (ROOT / "deploy/edge-outbox.toml").read_text()
    commented = re.findall(r"^# ?([a-z_]+) = (.*?)(?:[ \t]+#.*)?$", example, re.MULTILINE)
    assert {key for key, _ in commented} >= {"users", "attach", "attach_ca", "max_offline"}
    path = tmp_path / "exists"
    path.write_text("")
    for key, value in commented:
        text = f'{key} = "{path}"\n' if value.startswith('"/') else f"{key} = {value}\n"
        config = write(tmp_path, text)
        result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
        assert f"Error: {config}" not in result.output, result.output  # a problem of the file names it
