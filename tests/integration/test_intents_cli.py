"""`cloud-bridge intents ...` on each store backend: --json output, tables, refusals (exit 1, one line)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner, Result

from cloud_bridge.cli import main
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Envelope
from tests.support.stores import admit, store, store_url

__all__ = ["store", "store_url"]  # fixtures

DEV = DeviceRef("dev-1", "acme", "boiler-7")
NOW = 1_800_000_000.0
DAY = 86_400.0


def env(ident: str, created: float = NOW) -> Envelope:
    return Envelope(ident, "hvac-ui", "email.send", int(created * 1000) - 5000, None, 1, {"to": "a@example.com"})


def allow(_envelope: Envelope) -> Decision:
    return Decision(True)


def cli(url: StoreUrl, tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["intents", *args, "--store", str(url), "--data-dir", str(tmp_path / "cli")])


async def _setup(store: Store) -> None:
    await admit(store.ledger, DEV, [env("failed-1"), env("queued-1")], allow, NOW)
    [entry] = await store.ledger.claim(["email.send"], 1, NOW)
    await store.ledger.finish(entry, EntryState.FAILED, "smtp_550", "550 no", NOW, "smtp")


async def test_ls_and_show_print_json_and_tables(store: Store, store_url: StoreUrl, tmp_path: Path) -> None:
    await _setup(store)
    listed = cli(store_url, tmp_path, "ls", "--device", "dev-1", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["intent_id"], r["state"], r["retryable"], r["cancellable"]) for r in rows] == [
        ("queued-1", "queued", False, True),  # changed at the same time: the newer row first
        ("failed-1", "failed", True, False),
    ]
    assert set(rows[1]) >= {"device_id", "tenant", "app", "kind", "code", "detail", "attempt", "updated", "created"}
    only_failed = json.loads(cli(store_url, tmp_path, "ls", "--state", "failed", "--json").output)
    assert [r["intent_id"] for r in only_failed] == ["failed-1"]
    table = cli(store_url, tmp_path, "ls", "--tenant", "acme")
    assert table.exit_code == 0 and "failed-1" in table.output and "smtp_550" in table.output
    assert cli(store_url, tmp_path, "ls", "--tenant", "nobody").output == "no intents\n"
    shown = json.loads(cli(store_url, tmp_path, "show", "failed-1", "--json").output)
    assert (shown["device_id"], shown["detail"]) == ("dev-1", "550 no")
    assert [(h["event"], h["code"]) for h in shown["history"]] == [("accept", ""), ("fail", "smtp_550")]
    text = cli(store_url, tmp_path, "show", "dev-1", "queued-1")
    assert text.exit_code == 0 and "state:" in text.output and "queued" in text.output
    history = text.output.split("history:\n")[1].splitlines()
    assert history == ["  2027-01-15T08:00:00.000Z  accept"]
    bad = cli(store_url, tmp_path, "ls", "--state", "lost")
    assert bad.exit_code == 2 and "unknown state 'lost'" in bad.output


async def test_retry_and_cancel_print_what_they_did_and_refuse_what_the_ledger_does_not_allow(
    store: Store, store_url: StoreUrl, tmp_path: Path
) -> None:
    await _setup(store)
    refusals = [
        (("cancel", "dev-1", "failed-1"), "Error: cannot cancel an intent that is failed\n"),
        (("retry", "dev-1", "queued-1"), "Error: cannot requeue an intent that is queued\n"),
        (("retry", "dev-1", "missing"), "Error: no intent missing of device dev-1 in the ledger\n"),
        (("retry", "a", "b", "c"), "Error: name an intent as DEVICE INTENT_ID, or INTENT_ID alone when it is unique\n"),
    ]
    for args, message in refusals:
        refused = cli(store_url, tmp_path, *args, "--operator", "alice")
        assert (refused.exit_code, refused.output) == (1, message), args
    done = cli(store_url, tmp_path, "retry", "dev-1", "failed-1", "--operator", "alice", "--json")
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    assert (doc["action"], doc["operator"], doc["intent"]["state"], doc["intent"]["attempt"]) == (
        "retry", "alice", "queued", 2,
    )  # fmt: skip
    cancelled = cli(store_url, tmp_path, "cancel", "queued-1", "--operator", "bob")
    assert (cancelled.exit_code, cancelled.output) == (0, "cancelled dev-1/queued-1: now failed (attempt 1)\n")
    audit = [(r.intent_id, str(r.event), r.detail) for r in await store.ledger.audit("dev-1")]
    assert ("failed-1", "requeue", "retried by operator alice") in audit
    assert ("queued-1", "cancel", "cancelled by operator bob") in audit


async def test_purge_uses_the_flags_or_the_configured_retention(
    store: Store, store_url: StoreUrl, tmp_path: Path
) -> None:
    then = time.time() - 95 * DAY  # past max_intent_age (90 days): a copy would be refused too_old
    await admit(store.ledger, DEV, [env("old", then), env("live", then)], allow, then)
    [entry] = await store.ledger.claim(["email.send"], 1, then)
    await store.ledger.finish(entry, EntryState.DELIVERED, "", "", then, "smtp")
    await store.ledger.confirm("dev-1", ["old"])
    config = tmp_path / "bridge.toml"
    config.write_text('[bridge]\nintent_retention = "100d"\naudit_retention = "1d"\n')
    purged = cli(store_url, tmp_path, "purge", "--config", str(config), "--json")
    by_config = json.loads(purged.stdout)
    assert (by_config["intents"], by_config["audit"]) == (0, 3)  # accepted twice, delivered once
    assert purged.stderr == "purged: 0/3\npurged: 3/3\n"  # progress: a paced purge takes 30 s a million
    by_default = json.loads(cli(store_url, tmp_path, "purge", "--json").stdout)  # 30 days, 90 days
    assert (by_default["intents"], by_default["audit"]) == (1, 0)
    listed = json.loads(cli(store_url, tmp_path, "ls", "--json").output)
    assert [r["intent_id"] for r in listed] == ["live"]  # a live row is never purged
    text = cli(store_url, tmp_path, "purge", "--older-than", "1d", "--audit-older-than", "1d")
    assert (text.exit_code, text.stdout) == (0, "purged 0 intents and 0 audit rows\n")
    bad = cli(store_url, tmp_path, "purge", "--older-than", "soon")
    assert bad.exit_code == 1 and "--older-than" in bad.output
    zero = cli(store_url, tmp_path, "purge", "--older-than", "0s")
    assert zero.exit_code == 1 and "positive" in zero.output


async def test_ls_says_when_its_limit_left_rows_out(store: Store, store_url: StoreUrl, tmp_path: Path) -> None:
    await _setup(store)
    cut = cli(store_url, tmp_path, "ls", "--limit", "1", "--json")
    assert cut.exit_code == 0, cut.output
    assert [r["intent_id"] for r in json.loads(cut.stdout)] == ["queued-1"]
    assert cut.stderr == "only the 1 most recently changed are shown; more match (raise --limit, or filter)\n"
    whole = cli(store_url, tmp_path, "ls", "--limit", "2", "--json")
    assert (len(json.loads(whole.stdout)), whole.stderr) == (2, "")


async def test_show_says_when_an_intent_waiting_for_its_retry_is_tried_next(
    store: Store, store_url: StoreUrl, tmp_path: Path
) -> None:
    """A row waiting out a provider's Retry-After (up to a day) showed as `queued` with its last code and tries,
    and nothing said whether it would run in a second or tomorrow: stuck or waiting, the operator could not tell."""
    await _setup(store)
    await admit(store.ledger, DEV, [env("waiting-1")], allow, NOW)
    [entry] = [e for e in await store.ledger.claim(["email.send"], 5, NOW) if e.intent_id == "waiting-1"]
    await store.ledger.reschedule(entry, NOW + 3600, "http_429", "HTTP 429 Too Many Requests", NOW)
    shown = json.loads(cli(store_url, tmp_path, "show", "waiting-1", "--json").output)
    assert (shown["state"], shown["code"], shown["tries"]) == ("queued", "http_429", 1)
    assert shown["next_try"] == "2027-01-15T09:00:00.000Z"
    text = cli(store_url, tmp_path, "show", "waiting-1").output
    assert "next_try:    2027-01-15T09:00:00.000Z\n" in text
    others = {r["intent_id"]: r["next_try"] for r in json.loads(cli(store_url, tmp_path, "ls", "--json").output)}
    assert others == {"waiting-1": "2027-01-15T09:00:00.000Z", "queued-1": None, "failed-1": None}
