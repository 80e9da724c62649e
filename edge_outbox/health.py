"""Whether the outbox is healthy, for supervisors: one rule for `edge-outbox status` and the HTTP probe. Pure."""

from __future__ import annotations

DEFAULT_MAX_OFFLINE_S = 3600.0
ATTACH_GRACE_S = 60.0  # attach mode: a broker connection down longer than this (or than max_offline_s) is a fault
# The running outbox's housekeeping records a heartbeat at least every BEAT_EVERY_S (edge_outbox.lock); one older
# than SILENT_AFTER_S means its event loop or its housekeeping is stuck, and what it recorded is stale.
BEAT_EVERY_S = 10.0
SILENT_AFTER_S = 60.0


def problems(
    *,
    link_state: str | None,
    link_since_ms: int | None,
    intake_held_since_ms: int | None,
    intake_reason: str,
    now_ms: int,
    max_offline_s: float = DEFAULT_MAX_OFFLINE_S,
    revoked: bool = False,
    attach_down_since_ms: int | None = None,
    silent_s: float | None = None,
    attach_fault: str = "",
    link_unanswered_since_ms: int | None = None,
) -> list[str]:
    """What is wrong, in words; empty when healthy.

    Unhealthy: the bridge revoked this device (`revoked`: stored, by a receipt or the link, whatever
    the link is doing now: a site with no link, or outside its forwarding windows, learns it from a
    receipt); intake cannot store (a full disk or a full queue
    holds the apps' acknowledgements); the link to the bridge has been down longer than
    `max_offline_s` (None: not enrolled or not forwarding, which is not a fault here), or intents sent to it have
    had no ack at all for longer than that (`link_unanswered_since_ms`: a link that connects and drops mid-batch,
    again and again, is up at times and delivers nothing); in attach mode, the
    connection to the site's broker, through which every intent comes, has been down longer than ATTACH_GRACE_S
    (or `max_offline_s` if shorter), or the broker sends the outbox nothing (`attach_fault`: its ACL, say);
    the outbox's heartbeat is `silent_s` old, more than SILENT_AFTER_S (None: none to judge).
    """
    found: list[str] = []
    if revoked or link_state == "revoked":
        found.append("this device was revoked at the bridge")
    if intake_held_since_ms is not None:
        held_s = max(0.0, (now_ms - intake_held_since_ms) / 1000)
        found.append(f"intake paused for {held_s:.0f} s: {intake_reason}")
    down_long = False
    if link_state in ("offline", "connecting") and link_since_ms is not None:
        down_s = (now_ms - link_since_ms) / 1000
        if down_s > max_offline_s:
            down_long = True
            found.append(f"no link to the bridge for {down_s:.0f} s (more than {max_offline_s:.0f} s)")
    if link_unanswered_since_ms is not None and link_state != "revoked" and not down_long:
        waited_s = (now_ms - link_unanswered_since_ms) / 1000
        if waited_s > max_offline_s:
            found.append(
                f"the bridge has acknowledged nothing sent to it for {waited_s:.0f} s (more than"
                f" {max_offline_s:.0f} s): the link connects but carries nothing through (the log says why each"
                " connection ended)"
            )
    if attach_down_since_ms is not None:
        down_s = max(0.0, (now_ms - attach_down_since_ms) / 1000)
        if down_s > min(max_offline_s, ATTACH_GRACE_S):
            found.append(f"not attached to the site broker for {down_s:.0f} s: no intent is taken")
    if silent_s is not None and silent_s > SILENT_AFTER_S:
        found.append(
            f"no heartbeat from the outbox for {silent_s:.0f} s (more than {SILENT_AFTER_S:.0f} s): its event loop or"
            " its housekeeping is stuck, and what it last recorded may be stale"
        )
    if attach_fault:
        found.append(attach_fault)
    return found
