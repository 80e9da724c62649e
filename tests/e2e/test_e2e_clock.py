"""An edge whose clock is wrong by hours or a day (a dead RTC battery; libfaketime here) still delivers,
and a deadline still means what the app meant: each intent carries a one-hour ttl, which on an
uncorrected clock two hours or a day behind reaches the bridge already expired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.edge import Client, OutboxProcess
from tests.support.net import free_port, wait_until
from tests.support.services import require_binary
from tests.support.sneakernet import cut_off, edge_cli, imported
from tests.support.stack import INTENT_TOPIC, Stack, assert_exactly_once, ids, intent

COUNT = 50


def _faketime(offset: str) -> tuple[str, ...]:
    return (require_binary("faketime", "apt-get install faketime"), "-f", offset)


def _publish_with_deadline(app: Client, intent_ids: list[str]) -> None:
    for intent_id in intent_ids:
        app.publish(INTENT_TOPIC, {**intent(intent_id), "ttl": 3600}, name=intent_id)
    wait_until(lambda: set(intent_ids) <= app.acked, 60, what="PUBACKs")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("offset", ["+2h", "-2h", "+1d", "-1d"])
def test_an_edge_whose_clock_is_off_connects_and_delivers(stack: Stack, offset: str) -> None:
    stack.start_edge(prefix=_faketime(offset))  # enrolled on a right clock: it learns the offset when refused
    app = stack.app(subscribe=False)
    intent_ids = ids("clock" + offset.replace("+", "p").replace("-", "m"), COUNT)
    _publish_with_deadline(app, intent_ids)
    try:
        stack.wait_delivered(intent_ids, 120)
    except TimeoutError:
        print(stack.diagnostics())
        raise
    assert_exactly_once(set(intent_ids), stack.sink, stack.edge_states())
    assert stack.edge is not None
    side = "behind" if offset.startswith("-") else "ahead of"
    assert f"{side} the bridge's: tokens and deadlines are corrected" in stack.edge.log()


@pytest.mark.timeout(240)
def test_a_never_online_edge_whose_clock_is_a_day_behind_keeps_its_deadlines(stack: Stack, tmp_path: Path) -> None:
    fake = _faketime("-1d")
    site = tmp_path / "site"
    stack.bridge.enroll(site, name="site", prefix=fake)  # enrollment's answer carries the bridge's time
    cut_off(site)
    port = free_port()
    edge = OutboxProcess(site, port, prefix=fake).start()
    try:
        app = Client(port, "site-app").connect()
        stack.apps.append(app)
        intent_ids = ids("stick-day", COUNT)
        _publish_with_deadline(app, intent_ids)
        bundle, receipt = tmp_path / "site.bundle", tmp_path / "site.receipt"
        result = edge_cli(site, "export", "--out", str(bundle))
        assert result.returncode == 0, result.stderr
        summary = imported(stack, bundle, receipt, "--wait", "60s")
        assert summary["states"] == {"accepted": COUNT}, summary  # not expired: the deadlines were corrected
        wait_until(lambda: stack.sink.distinct() == COUNT, 60, what="execution")
        result = edge_cli(site, "import-receipt", str(receipt), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["states"] == {"delivered": COUNT}
        assert max(stack.sink.executions().values()) == 1
    finally:
        edge.stop()
