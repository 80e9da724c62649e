"""The health rule shared by `edge-outbox status` and the probe endpoint."""

from __future__ import annotations

from edge_outbox.health import SILENT_AFTER_S, problems

NOW = 1_000_000_000


def test_healthy_when_connected_and_storing() -> None:
    assert (
        problems(link_state="connected", link_since_ms=0, intake_held_since_ms=None, intake_reason="", now_ms=NOW) == []
    )


def test_not_enrolled_is_not_a_fault() -> None:
    assert problems(link_state=None, link_since_ms=None, intake_held_since_ms=None, intake_reason="", now_ms=NOW) == []


def test_offline_counts_only_past_the_threshold() -> None:
    recent = problems(
        link_state="offline", link_since_ms=NOW - 60_000, intake_held_since_ms=None, intake_reason="", now_ms=NOW
    )
    assert recent == []
    (long,) = problems(
        link_state="offline", link_since_ms=NOW - 7_200_000, intake_held_since_ms=None, intake_reason="", now_ms=NOW
    )
    assert "no link to the bridge for 7200 s" in long


def test_revoked_and_paused_intake_are_both_named() -> None:
    found = problems(
        link_state="revoked",
        link_since_ms=NOW,
        intake_held_since_ms=NOW - 5000,
        intake_reason="cannot store: disk full",
        now_ms=NOW,
    )
    assert found == ["this device was revoked at the bridge", "intake paused for 5 s: cannot store: disk full"]


def test_a_stored_revocation_is_a_problem_whatever_the_link_says() -> None:
    """A receipt says so on a site with no link (no link state at all) or outside its windows (offline)."""
    for link_state in (None, "offline"):
        found = problems(
            link_state=link_state,
            link_since_ms=NOW if link_state else None,
            intake_held_since_ms=None,
            intake_reason="",
            now_ms=NOW,
            revoked=True,
        )
        assert found == ["this device was revoked at the bridge"]


def test_a_heartbeat_older_than_a_minute_is_a_problem() -> None:
    """The running outbox's heartbeat: none to judge, fresh, at the limit, past it."""
    found = {
        silent: problems(
            link_state=None,
            link_since_ms=None,
            intake_held_since_ms=None,
            intake_reason="",
            now_ms=NOW,
            silent_s=silent,
        )
        for silent in (None, 5.0, SILENT_AFTER_S, SILENT_AFTER_S + 1)
    }
    assert [bool(f) for f in found.values()] == [False, False, False, True]
    assert found[SILENT_AFTER_S + 1][0].startswith("no heartbeat from the outbox for 61 s (more than 60 s)")


def test_an_attached_broker_that_sends_nothing_is_a_problem() -> None:
    fault = "the site broker sends nothing on outbox/+/+, not even the outbox's own hello (ACL?)"
    found = problems(
        link_state=None, link_since_ms=None, intake_held_since_ms=None, intake_reason="", now_ms=0, attach_fault=fault
    )
    assert found == [fault]


def test_nothing_acknowledged_counts_past_the_threshold_and_once_with_a_link_down_as_long() -> None:
    def found(state: str, since: int, unanswered: int) -> list[str]:
        return problems(
            link_state=state, link_since_ms=since, intake_held_since_ms=None, intake_reason="", now_ms=NOW,
            link_unanswered_since_ms=unanswered,
        )  # fmt: skip

    assert found("connected", NOW - 10_000, NOW - 3_000_000) == []
    (flapping,) = found("connected", NOW - 10_000, NOW - 7_200_000)
    assert flapping.startswith("the bridge has acknowledged nothing sent to it for 7200 s (more than 3600 s)")
    assert found("offline", NOW - 5_000, NOW - 7_200_000) == [flapping]  # between two of its connections
    assert found("offline", NOW - 7_200_000, NOW - 7_200_000) == ["no link to the bridge for 7200 s (more than 3600 s)"]
