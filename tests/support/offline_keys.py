"""One set of the bridge's offline keys for every node of a test's shared store.

Nodes (and operators' commands) on one store must hold the same offline keys, which the store records at the
first start (`cloud_bridge.offline_keys.load_for_store`): a node with others refuses to start. Each node of a
test has a data directory of its own, so each gets a copy of one set, as an operator copies it to each node.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from cloud_bridge.offline_keys import keys_dir, load_or_create

_made: list[Path] = []


def _shared() -> Path:
    if not _made:
        directory = Path(tempfile.mkdtemp(prefix="bridge-offline-keys-"))
        atexit.register(shutil.rmtree, directory, True)
        load_or_create(directory)
        _made.append(directory)
    return _made[0]


def share_offline_keys(data_dir: Path) -> None:
    """Put the tests' one set of offline keys into `data_dir`, unless it holds some already."""
    target = keys_dir(data_dir)
    if not target.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(keys_dir(_shared()), target)
