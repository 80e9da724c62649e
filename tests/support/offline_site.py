"""A site and a bridge data dir without a running bridge: the real `cloud-bridge` and `edge-outbox` commands
on their data dirs, files between them (enrollment on files, bundles, receipts), and the bridge's executor
played on its ledger. Every helper takes the test's tmp_path: the bridge's data dir is tmp_path / "bridge"."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from cloud_bridge.ledger_states import EntryState
from cloud_bridge.store import open_store
from cloud_bridge.store.url import StoreUrl
from edge_outbox import db, ops
from edge_outbox.intake_rules import Admitted
from edge_outbox.ops import QueueLimits
from intent_contract import signed
from intent_contract.codec import Ack, decode_acks
from intent_contract.offline_wire import RECEIPT_TYPE, Receipt
from tests.support.sneakernet import edge_cli, run
from tests.support.stack import TENANT, bridge_cli


def bridge(bridge_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*bridge_cli(), *args, "--data-dir", str(bridge_dir)])


def ticket(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / f"{name}.ticket"
    made = bridge(tmp_path / "bridge", "devices", "enroll-ticket", "--tenant", TENANT, "--name", name, "--out",
                  str(out), *extra)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def request(tmp_path: Path, site: Path, ticket_file: Path, name: str, *extra: str) -> Path:
    out = tmp_path / f"{name}.request"
    made = edge_cli(site, "enroll-request", "--ticket", str(ticket_file), "--out", str(out), *extra)
    assert made.returncode == 0, made.stderr
    return out


def response(tmp_path: Path, request_file: Path) -> Path:
    out = request_file.with_suffix(".response")
    answered = bridge(tmp_path / "bridge", "devices", "enroll-offline", str(request_file), "--out", str(out))
    assert answered.returncode == 0, answered.stderr
    return out


def enrolled_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    imported = edge_cli(
        site, "enroll-import", str(response(tmp_path, request(tmp_path, site, ticket(tmp_path, "s"), "s")))
    )
    assert imported.returncode == 0, imported.stderr
    return site


def backlog(site: Path, count: int) -> None:
    """`count` intents stored as the outbox's intake stores them."""
    conn = db.connect(site)
    try:
        now = time.time_ns() // 1_000_000
        body = b'{"to": "ops@example.com", "subject": "s", "text": "x"}'
        rows = [Admitted(f"bulk-{i:06d}", "hvac-ui", "email.send", body, 0, now, None, True) for i in range(count)]
        ops.commit_intakes(conn, rows, QueueLimits(), now)
    finally:
        conn.close()


def email_policy(tmp_path: Path) -> Path:
    """A bridge config (tmp_path/bridge.toml) whose tenant may send email to example.com."""
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'[tenants.{TENANT}.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n'
        'email_from = "alerts@example.com"\n'
    )
    return config


def import_file(tmp_path: Path, bundle: Path, config: Path) -> Path:
    """`cloud-bridge import` of `bundle` under `config`; the receipt it wrote."""
    receipt = bundle.with_suffix(".receipt")
    done = bridge(tmp_path / "bridge", "import", str(bundle), "--config", str(config), "--receipt", str(receipt))
    assert done.returncode == 0, done.stderr
    return receipt


def receipt_acks(receipt: Path) -> list[Ack]:
    """The acks a receipt file carries (read, not verified: the test made it)."""
    body = Receipt.decode(signed.read(receipt.read_bytes(), typ=RECEIPT_TYPE, max_bytes=1 << 30).body)
    return [ack for message in body.acks for ack in decode_acks(message)]


def executed(bridge_dir: Path, state: EntryState, code: str = "") -> int:
    """What the bridge's executor does to every row queued in its ledger now: ends it in `state`; how many."""

    async def run() -> int:
        store = open_store(StoreUrl.sqlite(bridge_dir), node="test-executor")
        await store.open()
        try:
            claimed = await store.ledger.claim(["email.send"], 100, time.time() + 60)
            for entry in claimed:
                await store.ledger.finish(entry, state, code, "", time.time(), "smtp")
            return len(claimed)
        finally:
            await store.close()

    return asyncio.run(run())
