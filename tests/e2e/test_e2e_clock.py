"""An edge whose clock is wrong by hours or a day (a dead RTC battery; libfaketime here) still delivers,
and a deadline still means what the app meant: each intent carries a one-hour ttl, which on an
uncorrected clock two hours or a day behind reaches the bridge already expired."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge_outbox.db import LINK_SEEN_KEY
from tests.support.attach import attached
from tests.support.edge import Client, OutboxProcess
from tests.support.net import free_port, wait_for_port, wait_until
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


def _stepping_clock(clock_file: Path) -> tuple[str, ...]:
    """The outbox under libfaketime with the offset in `clock_file`, read at every clock read: the test steps the
    wall clock by rewriting it, as NTP does once it reaches a box that booted on a wrong clock. The monotonic and
    boot clocks stay real (a real step moves only the wall clock)."""
    require_binary("faketime", "apt-get install faketime")
    library = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
    if not library.exists():
        pytest.skip(f"no {library}")
    return (
        "env",
        f"LD_PRELOAD={library}",
        f"FAKETIME_TIMESTAMP_FILE={clock_file}",
        "FAKETIME_NO_CACHE=1",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    )


@pytest.mark.timeout(240)
def test_intents_taken_in_before_the_clock_is_corrected_keep_their_deadlines(stack: Stack, tmp_path: Path) -> None:
    clock_file = tmp_path / "clock"
    clock_file.write_text("-1d\n")  # booted a day behind (a flat RTC battery)
    assert stack.bridge.stop() == 0, stack.bridge.log()  # no link yet: the intents wait on the edge
    edge = stack.start_edge(prefix=_stepping_clock(clock_file))
    app = stack.app(subscribe=False)
    intent_ids = ids("stepped", COUNT)
    _publish_with_deadline(app, intent_ids)  # a one-hour ttl, taken in on the wrong clock
    clock_file.write_text("+0\n")  # NTP steps the clock a day forward, minutes (here seconds) after the intents

    def noticed() -> bool:
        states = stack.edge_states()
        return "clock stepped" in edge.log() or any(states[i] != "accepted" for i in intent_ids)

    wait_until(noticed, 60, what="the step noticed, or the intents ended")
    stack.bridge.start()
    # Before: the next housekeeping tick found every deadline a day past and expired them all, unsent; one the
    # forwarder sent first reached the bridge created a day ago and already expired.
    ended = wait_until(lambda: _ended(stack, intent_ids), 120, what="a result for every intent")
    assert set(ended.values()) == {"delivered"}, stack.diagnostics()
    stack.wait_delivered(intent_ids, 60)
    assert_exactly_once(set(intent_ids), stack.sink, stack.edge_states())
    assert "this device's clock stepped 1d00h forward" in edge.log()


def _ended(stack: Stack, intent_ids: list[str]) -> dict[str, str] | None:
    states = stack.edge_states()
    ended = {i: states[i] for i in intent_ids}
    return None if {"accepted", "forwarded"} & set(ended.values()) else ended


def _health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.timeout(120)
def test_a_clock_step_moves_the_link_outage_with_it(stack: Stack, tmp_path: Path) -> None:
    """A box booted a day behind, its bridge away for seconds, when NTP steps its clock forward. The outbox moved
    what it stored with the step, not when its link went down: /healthz and `edge-outbox status` said "no link to
    the bridge for 86400 s (more than 3600 s)" the moment the clock was corrected, and went on saying it until the
    link came back (outside its forwarding windows, hours)."""
    clock_file = tmp_path / "clock"
    clock_file.write_text("-1d\n")
    assert stack.bridge.stop() == 0, stack.bridge.log()
    metrics = free_port()
    edge = stack.start_edge("--metrics", f"127.0.0.1:{metrics}", prefix=_stepping_clock(clock_file))
    try:
        wait_until(lambda: "bridge link offline" in edge.log(), 30, what="the link down")
        clock_file.write_text("+0\n")
        wait_until(lambda: "this device's clock stepped 1d00h forward" in edge.log(), 30, what="the step followed")
        health = _health(metrics)
        assert health == (200, '{"status": "ok", "problems": []}'), edge.log()[-3000:]

        def status_problems() -> list[str]:
            result = edge_cli(stack.edge_dir, "status", "--json")
            return list(json.loads(result.stdout)["problems"])

        wait_until(lambda: status_problems() == [], 30, what="status on the corrected clock")
    finally:
        edge.stop()


def test_a_clock_step_moves_an_attached_outbox_s_broker_outage_with_it(tmp_path: Path) -> None:
    """Attach mode: a box booted a day behind, the site's broker away for seconds, when NTP steps the clock forward.
    The time the broker connection went down was on the wall clock, not the outbox's: /healthz said the broker was
    away for 86400 s (more than --max-offline) the moment the clock was corrected, until the broker came back."""
    clock_file = tmp_path / "clock"
    clock_file.write_text("-1d\n")
    metrics = free_port()
    outbox = attached(tmp_path, free_port(), "--metrics", f"127.0.0.1:{metrics}")  # nothing listens there
    outbox.prefix = _stepping_clock(clock_file)
    outbox.start()
    try:
        wait_for_port(metrics)
        clock_file.write_text("+0\n")
        wait_until(lambda: "this device's clock stepped 1d00h forward" in outbox.log(), 30, what="the step followed")
        assert _health(metrics) == (200, '{"status": "ok", "problems": []}'), outbox.log()[-3000:]
    finally:
        outbox.stop()


def test_an_outage_counts_from_the_last_contact_across_a_restart(stack: Stack) -> None:
    """The link's outage counted from the outbox's start: a box offline for days that restarted (a nightly reboot,
    a crash loop, a supervisor restarting it for being unhealthy) was healthy again for --max-offline after each
    start. Here the outbox restarts two hours after its last contact (faketime +2h)."""
    metrics = free_port()
    edge = stack.start_edge("--metrics", f"127.0.0.1:{metrics}")
    wait_until(lambda: "bridge link connected" in edge.log(), 60, what="the link up")
    wait_until(lambda: _stored(stack.edge_dir, LINK_SEEN_KEY) is not None, 30, what="the last contact kept")
    assert edge.stop() == 0
    assert stack.bridge.stop() == 0, stack.bridge.log()
    edge = stack.start_edge("--metrics", f"127.0.0.1:{metrics}", prefix=_faketime("+2h"))
    try:
        wait_for_port(metrics)
        status, body = _health(metrics)
        assert status == 503 and "no link to the bridge for 72" in body, (body, edge.log()[-3000:])
    finally:
        edge.stop()


def _stored(data_dir: Path, key: str) -> str | None:
    conn = sqlite3.connect(f"file:{data_dir / 'outbox.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])
