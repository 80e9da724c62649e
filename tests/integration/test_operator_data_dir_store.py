"""An operator's command given a PostgreSQL node's data dir alone is told where the store is.

Before: docs/deploy.md's `cloud-bridge devices enroll-code --data-dir /var/lib/cloud-bridge ...`, run on a node
whose config names a PostgreSQL store, made a SQLite store in that data dir and printed a code no node knew;
the device's `edge-outbox enroll` was then refused, `enrollment code unknown, used or expired`. A node on a
shared store now records its address in its data dir (`node_lock.mark_shared_store`), and the commands refuse
SQLite files there, naming it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cloud_bridge.node_lock import NodeLock
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, counting, node
from tests.support.stack import TENANT, bridge_cli
from tests.support.stores import pg_url

__all__ = ["counting", "pg_url"]  # fixtures

pytestmark = pytest.mark.timeout(120)


def _enroll_code(data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [*bridge_cli(), "devices", "enroll-code", "--tenant", TENANT, "--name", "b7", "--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_enroll_code_on_a_postgresql_nodes_data_dir_names_its_store(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl, counting: CountingIntegration
) -> None:
    async with node(tmp_path, server_cert_files, pg_url, "node-a", counting) as a:
        data_dir = a.settings.data_dir
        result = _enroll_code(data_dir)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: the bridge nodes of {data_dir} run on {pg_url}, not on SQLite files there: give this command the"
        " nodes' --config (or --store)\n"
    )
    assert not (data_dir / "registry.db").exists()


def test_a_sqlite_node_on_the_data_dir_takes_it_back(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("postgresql://bridge@db/bridge\n")  # left by a node on PostgreSQL
    lock = NodeLock(tmp_path)
    lock.acquire("node-s")
    lock.release()
    result = _enroll_code(tmp_path)
    assert (result.returncode, result.stderr.startswith("one-time code for")) == (0, True), result.stderr
