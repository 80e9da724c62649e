"""The fleet view's pure rules: live sessions, stuck sites, anomalies; and the edge's report builder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cloud_bridge.fleet import DeviceState, Telemetry
from cloud_bridge.fleet_rules import (
    ADDRESSES,
    AUTH_FAILURES,
    STALE_AFTER_S,
    SUBSCRIBE_GRACE_S,
    VOLUME_FLOOR,
    AnomalyKind,
    DiagnoseStep,
    anomalies,
    device_row,
    diagnose_step,
    session_live,
)
from edge_outbox.fleet_link import window_text
from edge_outbox.fleet_report import EdgeFacts, RecentErrors, build_diagnosis, build_health
from edge_outbox.forward_wire import LinkSnapshot, LinkState
from edge_outbox.ops import Summary
from edge_outbox.windows import Window
from intent_contract.device_wire import ErrorLine, HealthReport, LinkStats

NOW = 1_800_000_000.0
DAY = 86_400.0


@dataclass(frozen=True)
class Dev:
    device_id: str = "dev-1"
    tenant: str = "acme"
    name: str = "boiler-7"
    enrolled_at: float = NOW - 30 * DAY
    revoked_at: float | None = None


def kinds(telemetry: Telemetry, enrolled_at: float = NOW - 30 * DAY) -> set[AnomalyKind]:
    return {a.kind for a in anomalies(telemetry, enrolled_at=enrolled_at, now=NOW)}


def test_anomalies_are_flagged_at_their_thresholds_and_not_below() -> None:
    assert kinds(Telemetry(auth_failures=AUTH_FAILURES - 1)) == set()
    assert kinds(Telemetry(auth_failures=AUTH_FAILURES)) == {AnomalyKind.AUTH_FAILURES}
    assert kinds(Telemetry(addresses=("192.0.2.1",) * (ADDRESSES - 1))) == set()
    assert kinds(Telemetry(addresses=("192.0.2.1", "192.0.2.2"))) == {AnomalyKind.MANY_ADDRESSES}
    usual_week = 168 * 20  # twenty an hour
    assert kinds(Telemetry(recent_volume=199, baseline_volume=usual_week)) == set()
    assert kinds(Telemetry(recent_volume=200, baseline_volume=usual_week)) == {AnomalyKind.VOLUME_SPIKE}
    # A quiet device still needs the floor before a burst counts as a spike.
    assert kinds(Telemetry(recent_volume=VOLUME_FLOOR - 1, baseline_volume=0)) == set()
    assert kinds(Telemetry(recent_volume=VOLUME_FLOOR, baseline_volume=0)) == {AnomalyKind.VOLUME_SPIKE}
    # A device enrolled today has no usual volume yet; one enrolled two days ago is judged on those days.
    assert kinds(Telemetry(recent_volume=10_000), enrolled_at=NOW - 3600) == set()
    two_days = Telemetry(recent_volume=199, baseline_volume=46 * 20)  # twenty an hour over its 46 known hours
    assert kinds(two_days, enrolled_at=NOW - 2 * DAY) == set()
    assert kinds(dataclasses.replace(two_days, recent_volume=200), enrolled_at=NOW - 2 * DAY) == {
        AnomalyKind.VOLUME_SPIKE
    }
    assert anomalies(None, enrolled_at=0, now=NOW) == ()


def test_a_session_is_live_only_while_its_node_beats() -> None:
    state = DeviceState("dev-1", node="node-a", connected_at=NOW - 100, seen_at=NOW - 100)
    assert session_live(state, {"node-a": NOW - 1}, NOW)
    assert not session_live(state, {"node-a": NOW - STALE_AFTER_S - 1}, NOW)  # the node stopped beating
    assert not session_live(state, {}, NOW)
    assert not session_live(dataclasses.replace(state, node=""), {"node-a": NOW}, NOW)
    assert not session_live(None, {"node-a": NOW}, NOW)


def _report(pending: int, oldest_ms: int | None) -> HealthReport:
    return HealthReport(
        at=0, software="1.2.3", counts={}, sizes={}, pending=pending, pending_bytes=0, oldest_pending_age_ms=oldest_ms,
        max_items=0, max_bytes=0, db_bytes=0, free_bytes=None, held=0, held_for_ms=None, held_reason="",
        link=LinkStats("connected", 0, 0, 0, 0.0, 1, 0), last_error=ErrorLine(30_000, "smtp_4xx", "busy"),
        clock_offset_ms=0,
    )  # fmt: skip


def test_stuck_is_an_old_backlog_or_no_contact() -> None:
    nodes = {"node-a": NOW}
    live = DeviceState("dev-1", node="node-a", seen_at=NOW - 10, report=_report(4, 50_000), report_at=NOW - 20)
    row = device_row(Dev(), live, nodes, None, now=NOW, stuck_after=60)
    assert row.connected and row.stuck == "4 pending, the oldest for 1m10s"  # 50 s old when reported, 20 s ago
    assert row.last_error == (NOW - 50, "smtp_4xx", "busy") and row.version == "1.2.3"
    assert device_row(Dev(), live, nodes, None, now=NOW, stuck_after=120).stuck is None
    drained = dataclasses.replace(live, report=_report(0, None))
    assert device_row(Dev(), drained, nodes, None, now=NOW, stuck_after=1).stuck is None
    gone = dataclasses.replace(drained, node="")
    cut = device_row(Dev(), gone, nodes, None, now=NOW, stuck_after=5)
    assert not cut.connected and cut.stuck == "no contact for 10s" and cut.flags == ("stuck",)
    assert device_row(Dev(), gone, nodes, None, now=NOW, stuck_after=60).stuck is None
    never = device_row(Dev(), None, nodes, None, now=NOW, stuck_after=60)
    assert never.stuck == "never connected; enrolled 30d00h ago" and never.backlog is None
    revoked = device_row(Dev(revoked_at=NOW - 5), gone, nodes, None, now=NOW, stuck_after=1)
    assert revoked.stuck is None and not revoked.connected and revoked.to_json()["status"] == "revoked"
    flagged = device_row(Dev(), drained, nodes, Telemetry(auth_failures=9), now=NOW, stuck_after=60)
    assert flagged.flags == ("auth_failures",) and flagged.to_json()["anomalies"][0]["kind"] == "auth_failures"


def test_the_edges_report_and_diagnosis_are_built_from_what_it_knows() -> None:
    errors = RecentErrors(size=3)
    for n in range(5):
        errors.add(1000 * n, f"code_{n}", "x" * 1000)
    summary = Summary({"accepted": 2, "delivered": 5}, {"accepted": 20, "delivered": 50}, 2, 20, 4_000)
    link = LinkSnapshot(LinkState.CONNECTED, 9_000, 9_500, 7, 5, 0.25, connects=3, failures=4)
    facts = EdgeFacts(max_items=10, max_bytes=100, db_bytes=4096, free_bytes=1 << 30, held=1, held_since_ms=9_900,
                      held_reason="disk full")  # fmt: skip
    report = build_health(summary=summary, link=link, facts=facts, errors=errors, clock_offset_ms=-42,
                          clock_source="enroll", software="1.0", now_ms=10_000)  # fmt: skip
    assert (report.at, report.pending, report.oldest_pending_age_ms, report.held_for_ms) == (10_000, 2, 6_000, 100)
    assert report.link == LinkStats("connected", 1_000, 7, 5, 0.25, 3, 4)
    assert report.last_error is not None and report.last_error.code == "code_4" and report.last_error.age_ms == 6_000
    assert len(report.last_error.detail) == 300
    failing = [("email.send", "smtp_550", 3)] * 12
    diagnosis = build_diagnosis("req-1", health=report, errors=errors, failing=failing, failing_window_ms=1,
                                bridge="b:8883", transport="tcp", windows=["02:00-04:00"])  # fmt: skip
    assert [e.code for e in diagnosis.errors] == ["code_4", "code_3", "code_2"]  # newest first, ring of three
    assert len(diagnosis.failing) == 10 and diagnosis.windows == ("02:00-04:00",)


def test_forwarding_windows_are_reported_as_they_were_given() -> None:
    for text in ("02:00-04:00", "22:30-02:05", "00:00-23:59"):
        assert window_text(Window.parse(text)) == text


def test_a_device_not_subscribed_yet_is_waited_for_until_it_has_shown_itself_too_old() -> None:
    def step(subscribed: bool, reported: bool, connected_for: float) -> DiagnoseStep:
        return diagnose_step(subscribed=subscribed, reported=reported, connected_for=connected_for)

    assert step(True, False, 3600.0) is DiagnoseStep.SEND
    assert step(False, False, 0.05) is DiagnoseStep.WAIT  # between its CONNECT and its SUBSCRIBE
    assert step(False, True, 3600.0) is DiagnoseStep.WAIT  # it reports, so it knows diagnose requests
    assert step(False, False, SUBSCRIBE_GRACE_S - 0.1) is DiagnoseStep.WAIT
    assert step(False, False, SUBSCRIBE_GRACE_S) is DiagnoseStep.UNANSWERABLE  # an edge older than them
