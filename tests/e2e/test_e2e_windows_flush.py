"""Connectivity windows and a technician's flush, with real processes and a counting proxy in front of the bridge."""

from __future__ import annotations

import datetime

import pytest

from tests.support.net import wait_until
from tests.support.sneakernet import edge_cli
from tests.support.stack import CutProxy, Stack, assert_exactly_once, ids, point_edge_at

COUNT = 100


def _closed_window() -> str:
    """A window that opens in two hours and lasts one (the machine's local time, as the outbox reads it)."""
    now = datetime.datetime.now().astimezone()
    start, end = now + datetime.timedelta(hours=2), now + datetime.timedelta(hours=3)
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.mark.timeout(240)
def test_outside_its_window_the_outbox_never_connects_until_a_flush_asks(stack: Stack) -> None:
    stack.proxy = CutProxy(stack.bridge.mqtt_port).start()
    point_edge_at(stack.edge_dir, stack.proxy.port)
    edge = stack.start_edge("--forward-window", _closed_window())
    app = stack.app(subscribe=False)
    intent_ids = ids("window", COUNT)
    stack.publish_all(app, intent_ids)
    wait_until(lambda: "outside the forwarding windows" in edge.log(), 30, what="the window decision")
    assert stack.proxy.connections == 0, "connected outside its window"
    assert set(stack.edge_states().values()) == {"accepted"}

    result = edge_cli(stack.edge_dir, "flush", "--timeout", "90s")
    assert result.returncode == 0, result.stderr + edge.log()[-3000:]
    assert "still pending: 0" in result.stdout
    assert "intents have their result" in result.stderr  # progress while it ran
    assert stack.proxy.connections >= 1
    assert_exactly_once(set(intent_ids), stack.sink, stack.edge_states())
    # The flush over, the window closed: the outbox drops the link and waits for its window again.
    wait_until(lambda: "forwarding window closed" in edge.log(), 30, what="the link closed after the flush")


@pytest.mark.timeout(240)
def test_flush_without_a_running_outbox_forwards_and_reports_what_is_left(stack: Stack) -> None:
    edge = stack.start_edge("--no-forward")
    app = stack.app(subscribe=False)
    first, second = ids("flush-a", COUNT), ids("flush-b", 10)
    stack.publish_all(app, first)
    app.close()
    stack.apps.remove(app)
    assert edge.stop() == 0

    result = edge_cli(stack.edge_dir, "flush", "--timeout", "90s", "--json")
    assert result.returncode == 0, result.stderr
    assert '"pending": 0' in result.stdout
    assert_exactly_once(set(first), stack.sink, stack.edge_states())

    edge = stack.start_edge("--no-forward")
    app = stack.app(subscribe=False)
    stack.publish_all(app, second)
    app.close()
    stack.apps.remove(app)
    assert edge.stop() == 0
    assert stack.bridge.stop() == 0  # the link the technician brought does not reach the bridge after all
    result = edge_cli(stack.edge_dir, "flush", "--timeout", "3s")
    assert result.returncode == 1
    assert "10 intents still pending" in result.stderr
