"""Every node of a shared store holds the same offline keys, or refuses to start (docs/scale-out.md).

Before: a node started with a data directory without `offline-keys` (docs/scale-out.md step 4 does not copy
them; only compose/cloud.yml mounts them) made keys of its own and ran. A device enrolled through it pinned
keys no other node held: its bundles could not be decrypted and its receipts were refused anywhere else. The
store now records the first keys a bridge used; a node or operator's command with none refuses to make its
own, and one with others refuses to run, each saying what to copy where.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.node import Bridge
from cloud_bridge.offline_keys import keys_dir, load_or_create
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, counting, make_settings, node
from tests.support.stack import TENANT, bridge_cli
from tests.support.stores import pg_url

__all__ = ["counting", "pg_url"]  # fixtures

pytestmark = pytest.mark.timeout(120)


async def test_a_second_node_without_the_first_ones_keys_refuses_to_start(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl, counting: CountingIntegration
) -> None:
    async with node(tmp_path, server_cert_files, pg_url, "node-a", counting) as a:
        pinned = load_or_create(a.settings.data_dir).public.key_id
        settings = make_settings(tmp_path / "node-b", server_cert_files, store=pg_url, node_id="node-b")
        shutil.rmtree(keys_dir(settings.data_dir))  # what step 4 left: a data dir of its own, nothing in it
        with pytest.raises(ConfigError) as none:
            await Bridge(settings, integrations={"email.send": counting}).start()
        assert not keys_dir(settings.data_dir).exists()  # none made
        load_or_create(settings.data_dir)  # keys of its own
        with pytest.raises(ConfigError) as others:
            await Bridge(settings, integrations={"email.send": counting}).start()
    assert f"this store's bridges use the keys {pinned}: copy their offline-keys directory there" in none.value.detail
    assert f"are not the ones this store's bridges use ({pinned})" in others.value.detail


def _ticket(config: Path, data_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [*bridge_cli(), "devices", "enroll-ticket", "--tenant", TENANT, "--name", out.stem, "--out", str(out)]
    return subprocess.run(
        [*command, "--config", str(config), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_operators_machine_without_the_keys_writes_no_ticket_devices_could_not_use(
    tmp_path: Path, pg_url: StoreUrl
) -> None:
    config = tmp_path / "bridge-pg.toml"
    config.write_text(f'[bridge]\nstore = "{pg_url}"\n')
    first = _ticket(config, tmp_path / "node", tmp_path / "a.ticket")
    assert (first.returncode, first.stderr) == (0, "")
    laptop = _ticket(config, tmp_path / "laptop", tmp_path / "b.ticket")
    assert laptop.returncode == 1
    assert "no offline keys in" in laptop.stderr
    assert not (tmp_path / "b.ticket").exists()
    shutil.copytree(keys_dir(tmp_path / "node"), keys_dir(tmp_path / "laptop"))
    copied = _ticket(config, tmp_path / "laptop", tmp_path / "c.ticket")
    assert (copied.returncode, copied.stderr) == (0, "")
