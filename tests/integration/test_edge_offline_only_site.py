"""A site enrolled on files without a bridge address (`enroll-ticket` without `--bridge-url`), as the technician
meets it in docs/offline-sites.md: the commands about the link say there is none, rather than wait for one or
blame a running outbox for not running."""

from __future__ import annotations

import json
from pathlib import Path

from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from tests.support.cli_output import assert_one_line
from tests.support.net import free_port
from tests.support.offline_site import backlog, enrolled_site
from tests.support.sneakernet import edge_cli


def test_flush_says_at_once_that_a_site_without_a_bridge_address_cannot_connect(tmp_path: Path) -> None:
    site = enrolled_site(tmp_path)
    backlog(site, 3)
    # before: it tried a link that can never come and waited out --timeout (10 minutes in the docs)
    refused = edge_cli(site, "flush", "--timeout", "1h")
    assert_one_line(refused, "no bridge address (enrolled offline)")
    assert "edge-outbox export" in refused.stderr


async def test_status_of_a_running_site_without_a_bridge_address_does_not_say_the_outbox_is_not_running(
    tmp_path: Path,
) -> None:
    site = enrolled_site(tmp_path)
    outbox = Outbox(OutboxSettings(data_dir=site, listen_port=free_port()))
    await outbox.start()
    try:
        shown = edge_cli(site, "status")
        report = json.loads(edge_cli(site, "status", "--json").stdout)
    finally:
        await outbox.stop()
    assert "outbox: running" in shown.stdout, shown.stdout
    assert "not running)" not in shown.stdout  # before: "link: unknown (outbox not running)" beside it
    assert report["link"]["state"].startswith("none (enrolled offline, no bridge address")
