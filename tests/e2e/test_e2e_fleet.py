"""Fleet health end to end: real edges report to a real bridge, and an operator sees and asks them from the CLI.

`devices ls/show` show what a connected edge reported; `devices diagnose` asks it over its own MQTT
session and prints the answer, or, once it is gone, its last report and since when (on SQLite and on
PostgreSQL: the CLI is another process and reaches the bridge only through the store). `--stuck`
finds a site whose link is cut, and one whose backlog is old while it is connected. Anomalies come
from real failed connects (forged tokens) and from one device id connecting from two addresses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import REFUSED, bridge_command, diagnose, forged_connect, metrics, row, rows, shown
from tests.support.net import wait_until
from tests.support.stack import INTENT_TOPIC, CutProxy, Stack, ids, intent, point_edge_at, running_stack
from tests.support.stores import pg_database

FAST = ("--health-interval", "1s")  # a report a second, so that the tests see changes quickly


@pytest.fixture(params=["sqlite", "postgresql"])
def any_stack(request: pytest.FixtureRequest, tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[Stack]:
    """The e2e stack with the bridge's store on each backend."""
    with contextlib.ExitStack() as resources:
        store_args: tuple[str, ...] = ()
        if request.param == "postgresql":
            store_args = ("--store", str(resources.enter_context(pg_database())))
        yield resources.enter_context(running_stack(tmp_path, server_cert_files, store_args=store_args))


def _connected_with_report(stack: Stack) -> dict[str, object] | None:
    found = row(stack.bridge, stack.device_id)
    return found if found and found["connected"] and found["version"] else None


@pytest.mark.timeout(240)
def test_an_operator_sees_and_diagnoses_a_site_then_its_last_report_once_it_is_gone(any_stack: Stack) -> None:
    stack = any_stack
    assert row(stack.bridge, stack.device_id) is not None  # enrolled, never seen
    assert row(stack.bridge, stack.device_id)["stuck"] is None  # type: ignore[index]  # enrolled just now
    edge = stack.start_edge(*FAST)
    app = stack.app()
    try:
        wait_until(lambda: _connected_with_report(stack), 30, 0.5, what="the edge's first health report")
        delivered, refused = ids("ok", 3), ids("elsewhere", 2)
        stack.publish_all(app, delivered)
        for intent_id in refused:  # a recipient outside the tenant's domains: rejected by policy at the bridge
            app.publish(INTENT_TOPIC, {**intent(intent_id), "to": "ops@elsewhere.example"}, name=intent_id)
        stack.wait_delivered(delivered, 60)
        wait_until(lambda: all(stack.edge_states().get(i) == "rejected" for i in refused), 60, 0.5, what="rejections")

        def drained() -> dict[str, object] | None:
            found = row(stack.bridge, stack.device_id)
            return found if found and found["backlog"] == 0 else None

        listed = wait_until(drained, 30, 0.5, what="a report of the drained queue")
        assert listed["tenant"] == "e2e" and listed["node"] and listed["oldest_pending_s"] is None
        assert abs(listed["clock_offset_ms"]) < 5_000 and listed["flags"] == []  # same machine, same clock

        code, answer = diagnose(stack.bridge, stack.device_id)
        assert code == 0 and answer["outcome"] == "answered", answer
        diagnosis = answer["diagnosis"]
        assert {"kind": "email.send", "code": "policy_recipient", "count": 2} in diagnosis["failing"]
        assert diagnosis["health"]["counts"]["delivered"] == 3 and diagnosis["health"]["counts"]["rejected"] == 2
        assert diagnosis["health"]["link"]["state"] == "connected"
        assert diagnosis["bridge"].endswith(f":{stack.bridge.mqtt_port}") and diagnosis["transport"] == "tcp"
        text = bridge_command(stack.bridge, "devices", "diagnose", stack.device_id)
        assert text.returncode == 0 and "diagnosis from the device" in text.stdout
        assert "policy_recipient" in text.stdout and "Traceback" not in text.stderr

        detail = shown(stack.bridge, stack.device_id)
        assert detail["connected"] and detail["report"]["pending"] == 0 and detail["public_key"]
        assert detail["history"] and detail["history"][0]["report"]["software"] == listed["version"]
        table = stack.bridge.cli("devices", "ls")
        assert stack.device_id in table and "connected" in table

        assert edge.stop() == 0
        wait_until(lambda: not row(stack.bridge, stack.device_id)["connected"], 30, 0.5, what="the session's end")  # type: ignore[index]
        code, answer = diagnose(stack.bridge, stack.device_id)
        assert code == 0 and answer["outcome"] == "offline" and answer["diagnosis"] is None
        assert answer["last_report"]["counts"]["delivered"] == 3 and answer["device"]["seen_at"]
        text = bridge_command(stack.bridge, "devices", "diagnose", stack.device_id)
        assert "not connected (seen" in text.stdout and "its last health report" in text.stdout
    except TimeoutError:
        print(stack.diagnostics())
        raise


@pytest.mark.timeout(240)
def test_stuck_finds_a_site_whose_link_is_cut_and_one_whose_backlog_is_old(stack: Stack) -> None:
    proxy = stack.proxy = CutProxy(stack.bridge.mqtt_port).start()
    point_edge_at(stack.edge_dir, proxy.port)
    stack.start_edge(*FAST)
    app = stack.app(subscribe=False)
    stuck = ("--stuck", "--stuck-after", "3s")
    try:
        wait_until(lambda: _connected_with_report(stack), 30, 0.5, what="the edge's first health report")
        assert rows(stack.bridge, *stuck) == {}

        proxy.cut()
        found = wait_until(lambda: row(stack.bridge, stack.device_id, *stuck), 30, 0.5, what="listed as stuck")
        assert not found["connected"] and found["stuck"].startswith("no contact for")

        # More than the proxy lets through before it holds the bridge's answers: the edge reconnects, reports
        # its backlog and sends it, but hears nothing back, so the backlog stays and ages.
        backlog = ids("held", 300)
        stack.publish_all(app, backlog)
        proxy.reopen(hold_after=8192)

        def stuck_connected() -> dict[str, object] | None:
            found = row(stack.bridge, stack.device_id, *stuck)
            return found if found and found["connected"] else None

        found = wait_until(stuck_connected, 90, 0.5, what="listed as stuck while connected")
        assert found["backlog"] == 300 and str(found["stuck"]).startswith("300 pending, the oldest for")
        table = stack.bridge.cli("devices", "ls", *stuck)
        assert stack.device_id in table and "stuck" in table
        assert row(stack.bridge, stack.device_id, "--stuck", "--stuck-after", "1h") is None
    except TimeoutError:
        print(stack.diagnostics())
        raise


@pytest.mark.timeout(240)
def test_forged_connects_and_one_id_from_two_addresses_are_flagged(stack: Stack) -> None:
    edge = stack.start_edge(*FAST)
    try:
        wait_until(lambda: _connected_with_report(stack), 30, 0.5, what="the edge's first health report")
        assert row(stack.bridge, stack.device_id)["flags"] == []  # type: ignore[index]
        for _ in range(5):
            assert forged_connect(stack.bridge.mqtt_port, stack.bridge.certs["ca"], stack.device_id) == REFUSED

        def flagged(kind: str) -> dict[str, object] | None:
            found = row(stack.bridge, stack.device_id)
            return found if found and kind in found["flags"] else None  # type: ignore[operator]

        found = wait_until(lambda: flagged("auth_failures"), 30, 0.5, what="the auth_failures flag")
        assert "many_addresses" not in found["flags"]  # type: ignore[operator]
        detail = shown(stack.bridge, stack.device_id)
        assert detail["refused"]["code"] == "token_invalid" and detail["telemetry"]["auth_failures"] == 5
        assert "anomaly auth_failures: 5 refused connects" in stack.bridge.cli("devices", "show", stack.device_id)

        # The same device id from a second address: the edge now reaches the bridge from 127.0.0.2.
        assert edge.stop() == 0
        proxy = stack.proxy = CutProxy(stack.bridge.mqtt_port, source="127.0.0.2").start()
        point_edge_at(stack.edge_dir, proxy.port)
        stack.start_edge(*FAST)

        def flagged_here() -> dict[str, object] | None:
            # The gate's sighting of the connect and the session it then holds reach the fleet tables in
            # the desk's writes a second apart at most: a row read between them has the flag, not yet the session.
            found = flagged("many_addresses")
            return found if found and found["connected"] else None

        found = wait_until(flagged_here, 60, 0.5, what="the many_addresses flag on the connected device")
        assert found["address"] == "127.0.0.2"
        assert shown(stack.bridge, stack.device_id)["telemetry"]["addresses"] == ["127.0.0.1", "127.0.0.2"]
        assert "many_addresses" in stack.bridge.cli("devices", "ls")

        wanted = (
            'bridge_device_anomalies{kind="auth_failures"} 1.0',
            'bridge_device_anomalies{kind="many_addresses"} 1.0',
        )
        wait_until(lambda: all(w in metrics(stack.bridge) for w in wanted), 90, 1.0, what="anomalies in the metrics")
    except TimeoutError:
        print(stack.diagnostics())
        raise
