"""A site enrolled on files without a bridge address (`enroll-ticket` without `--bridge-url`), as the technician
meets it in docs/offline-sites.md: the commands about the link say there is none, rather than wait for one or
blame a running outbox for not running."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli_output import assert_one_line
from tests.support.offline_site import backlog, enrolled_site
from tests.support.sneakernet import edge_cli


def test_flush_says_at_once_that_a_site_without_a_bridge_address_cannot_connect(tmp_path: Path) -> None:
    site = enrolled_site(tmp_path)
    backlog(site, 3)
    # before: it tried a link that can never come and waited out --timeout (10 minutes in the docs)
    refused = edge_cli(site, "flush", "--timeout", "1h")
    assert_one_line(refused, "no bridge address (enrolled offline)")
    assert "edge-outbox export" in refused.stderr
