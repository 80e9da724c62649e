"""Times in both CLIs' --json output: one format (RFC 3339, UTC, milliseconds), whatever the command.

Real processes on an offline-enrolled site and its bridge (tests.support.offline_site): a script that reads
`created` of `ls` and `at` of `audit` reads every other time the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.offline_site import backlog, bridge, email_policy, enrolled_site, import_file
from tests.support.sneakernet import edge_cli

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIME_KEYS = re.compile(r"(^|_)(at|created|updated|expires|since|time)$")


def _times(doc: Any, where: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) of a key that names a time, anywhere in `doc`."""
    if isinstance(doc, list):
        return [found for n, item in enumerate(doc) for found in _times(item, f"{where}[{n}]")]
    if isinstance(doc, dict):
        found = [(f"{where}.{k}", v) for k, v in doc.items() if TIME_KEYS.search(k) and not isinstance(v, dict)]
        return found + [hit for k, v in doc.items() for hit in _times(v, f"{where}.{k}")]
    return []


@pytest.mark.timeout(180)
def test_every_time_in_json_output_is_rfc3339(tmp_path: Path) -> None:
    """`import-receipt --json` gave `clock.learned_at` as milliseconds since the epoch (1796494985448), beside
    `bridge_time` of `cloud-bridge import --json` and `created` of `ls --json` in RFC 3339."""
    site = enrolled_site(tmp_path)
    backlog(site, 2)
    bundle = tmp_path / "site.bundle"
    exported = edge_cli(site, "export", "--out", str(bundle), "--json")
    receipt = import_file(tmp_path, bundle, email_policy(tmp_path))
    outputs = {
        "export": exported,
        "import-receipt": edge_cli(site, "import-receipt", str(receipt), "--json"),
        "ls": edge_cli(site, "ls", "--json"),
        "status": edge_cli(site, "status", "--json"),
        "bridge intents ls": bridge(tmp_path / "bridge", "intents", "ls", "--json"),
        "bridge audit": bridge(tmp_path / "bridge", "audit", "--json"),
    }
    seen = set()
    for command, done in outputs.items():
        assert done.returncode == 0, (command, done.stderr)
        for path, value in _times(json.loads(done.stdout)):
            seen.add(path.rsplit(".", 1)[-1])
            assert value is None or (isinstance(value, str) and RFC3339.match(value)), (command, path, value)
    assert {"learned_at", "created", "updated", "at"} <= seen, seen
