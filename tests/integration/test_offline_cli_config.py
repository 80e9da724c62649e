"""`receipt`, `devices enroll-ticket` and `devices enroll-offline` on the nodes' config, as every operator command.

Before: the three took no `--config` (`Error: No such option '--config'.`). On a PostgreSQL store whose password
the config names (`store_password_env`, compose/cloud.yml's `migrate`, where docs/scale-out.md runs them) they
could not open the store, and `enroll-offline` wrote the default audience into a site's response whatever the
config's `audience` said: a site enrolled that way would have been refused at its first connect.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_bridge.store.url import StoreUrl
from tests.support.sneakernet import edge_cli, run
from tests.support.stack import TENANT, bridge_cli
from tests.support.stores import made, pg_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """The nodes' config: a PostgreSQL store, and an audience of its own."""
    with pg_database() as url:
        path = tmp_path / "bridge-pg.toml"
        path.write_text(f'[bridge]\naudience = "site-bridge"\nstore = "{made(url)}"\n')
        yield path


def _bridge(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A data dir of its own (the offline keys): the store is the config's, not SQLite files there.
    return run([*bridge_cli(), *args, "--config", str(config), "--data-dir", str(tmp_path / "node")])


def test_a_site_enrolled_on_files_through_the_nodes_config(tmp_path: Path, config: Path) -> None:
    ticket, request, response = (tmp_path / f"s.{suffix}" for suffix in ("ticket", "request", "response"))
    site = tmp_path / "site"
    steps = [
        _bridge(tmp_path, config, "devices", "enroll-ticket", "--tenant", TENANT, "--name", "s", "--out", str(ticket)),
        edge_cli(site, "enroll-request", "--ticket", str(ticket), "--out", str(request)),
        _bridge(tmp_path, config, "devices", "enroll-offline", str(request), "--out", str(response)),
        edge_cli(site, "enroll-import", str(response)),
    ]
    assert [(s.returncode, s.stderr) for s in steps] == [(0, "")] * 4
    device = json.loads((site / "identity" / "device.json").read_text())
    assert device["audience"] == "site-bridge"
    receipt = _bridge(tmp_path, config, "receipt", device["device_id"], "--out", str(tmp_path / "s.receipt"))
    assert (receipt.returncode, receipt.stderr) == (0, "")
    assert not (tmp_path / "node" / "registry.db").exists()  # the config's store, not one in the data dir


def test_the_store_url_the_config_names_is_the_one_used(tmp_path: Path) -> None:
    """Without a PostgreSQL server in the way: the config names a SQLite store elsewhere than the data dir."""
    store = tmp_path / "shared"
    path = tmp_path / "bridge.toml"
    path.write_text(f'[bridge]\nstore = "{StoreUrl.sqlite(store)}"\n')
    made(StoreUrl.sqlite(store))
    out = tmp_path / "t.ticket"
    result = _bridge(tmp_path, path, "devices", "enroll-ticket", "--tenant", TENANT, "--name", "t", "--out", str(out))
    assert (result.returncode, result.stderr) == (0, "")
    assert not (tmp_path / "node" / "registry.db").exists()
