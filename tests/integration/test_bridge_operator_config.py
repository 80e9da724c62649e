"""The operators' commands read the nodes' config file without the providers' keys, which only nodes use.

Before: `cloud-bridge devices enroll-code --config bridge-pg.toml` (docs/scale-out.md: operator commands
"work from anywhere with the same config") on an operator's machine without the nodes' secrets was refused,
`integrations.http.credentials.crm: token_env: the environment variable it names is not set or empty`: every
operator had to hold every provider key to enroll a device or list intents. The store's password is still
read (it opens the store); `cloud-bridge run` still needs every secret.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloud_bridge.config import load_config, read_config_file
from cloud_bridge.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

NODE_CONFIG = """
[bridge]
audience = "cloud-bridge"

[integrations.smtp]
host = "smtp.example.com"
username = "apikey"
password_env = "WALK_SMTP_PASSWORD"

[integrations.sms]
account_sid = "AC123"
from = "+15550100"
auth_token_file = "/nonexistent/sms-token"

[integrations.http.credentials.crm]
base_urls = ["https://api.crm.example/v1/"]
methods = ["POST"]
token_env = "WALK_CRM_TOKEN"

[integrations.notify.targets.ops]
urls_env = "WALK_NOTIFY_URLS"

[dashboard]
session_key_env = "WALK_SESSION_KEY"

[tenants.acme.policy]
kinds = ["email.send", "http.request"]
email_domains = ["example.com"]
email_from = "alerts@acme.example"
http_credentials = ["crm"]
"""

COMMANDS = [
    ["db", "upgrade"],
    ["devices", "enroll-code", "--tenant", "acme", "--name", "boiler-7"],
    ["devices", "ls"],
    ["intents", "ls"],
    ["audit"],
    ["status"],
    ["usage"],
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # no secret in it
    command = [sys.executable, "-m", "cloud_bridge", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(NODE_CONFIG)
    return path


def test_every_operator_command_runs_on_the_nodes_config_without_their_secrets(config: Path, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    results = {" ".join(args[:2]): _cli(*args, "--config", str(config), "--data-dir", data) for args in COMMANDS}
    failed = {name: r.stderr.strip() for name, r in results.items() if r.returncode != 0}
    assert failed == {}


def test_the_store_password_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    store = 'store = "postgresql://bridge@127.0.0.1:1/bridge"\nstore_password_env = "WALK_PG_PASSWORD"\n'
    path.write_text(NODE_CONFIG.replace('audience = "cloud-bridge"\n', f'audience = "cloud-bridge"\n{store}'))
    result = _cli("devices", "ls", "--config", str(path))
    assert (result.returncode, result.stderr.strip()) == (
        1,
        f"Error: {path}: bridge: store_password_env: the environment variable it names is not set or empty"
        " (the name is not shown, in case a secret was written there)",
    )


def test_a_node_still_needs_every_secret(config: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(read_config_file(config), {})
    for key in ("smtp: password_env", "sms: auth_token_file", "crm: token_env", "ops: urls_env", "session_key_env"):
        assert key in caught.value.detail
