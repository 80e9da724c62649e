"""Both CLIs, as real processes: our own errors are one line, a bug shows its traceback.

A CLI that turned every OSError or ValueError (or every sqlite3 error) into one line would hide bugs
behind messages that look like an operator's mistake.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import trustme

from cloud_bridge.store.url import StoreUrl
from edge_outbox import db
from tests.support.cli_output import assert_one_line, assert_traceback
from tests.support.disk import small_disk
from tests.support.https_stub import https_answering
from tests.support.net import free_port
from tests.support.stores import made, store_url

__all__ = ["store_url"]  # fixtures

# Runs a CLI in a fresh interpreter after `patch` (Python source) has replaced something in it.
_DRIVER = """
import sys
{patch}
from {package}.cli import main
sys.argv = {argv!r}
main()
"""


def run_cli(package: str, *args: str, patch: str = "") -> subprocess.CompletedProcess[str]:
    argv = [package.replace("_", "-"), *args]
    source = _DRIVER.format(patch=patch, package=package, argv=argv)
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False)


# -- edge-outbox -------------------------------------------------------------------------------


def test_edge_bug_shows_its_traceback(tmp_path: Path) -> None:
    db.connect(tmp_path).close()
    patch = (
        "from edge_outbox import ops\n"
        "def listing(*_a, **_k): raise ValueError('a bug in listing')\n"
        "ops.listing = listing"
    )
    assert_traceback(run_cli("edge_outbox", "ls", "--data-dir", str(tmp_path), patch=patch), "ValueError: a bug")


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"{}", "lacks device_id"),
        (b'{"device_id": "d-1", "tenant": "acme", "name": "n", "audience": "a"}', "lacks mqtt_port"),
        (b'{"device_id": "d-1", "tenant": "acme", "name": "n", "mqtt_port": "x", "audience": "a"}', "mqtt_port"),
        (b'{"device_id": "d-1", "tenant": ["acme"], "name": "n", "mqtt_port": 8883, "audience": "a"}', "tenant"),
        (b'{"device_id": "d-1", "tenant": "acme", "name": "n", "mqtt_port": 70000, "audience": "a"}', "mqtt_port"),
    ],
)
def test_an_enrollment_answer_the_edge_cannot_use_is_one_line(
    tmp_path: Path, ca: trustme.CA, server_cert_files: dict[str, Path], answer: bytes, said: str
) -> None:
    """A 201 without a field or with one of another type (a proxy's answer, a bridge of another version) was a
    KeyError or ValueError traceback."""
    with https_answering(ca, 201, answer) as port:
        result = run_cli(
            "edge_outbox", "enroll", "--bridge", f"https://127.0.0.1:{port}", "--code", "c0de",
            "--ca", str(server_cert_files["ca"]), "--data-dir", str(tmp_path),
        )  # fmt: skip
    assert_one_line(result, "the bridge's enrollment answer")
    assert said in result.stderr
    assert not (tmp_path / "identity" / "device.json").exists()


def test_edge_sql_bug_is_not_passed_off_as_a_database_error(tmp_path: Path) -> None:
    db.connect(tmp_path).close()
    patch = (
        "from edge_outbox import ops\n"
        "def listing(conn, *_a, **_k): return conn.execute('SELECT no_such_column FROM intents').fetchall()\n"
        "ops.listing = listing"
    )
    result = run_cli("edge_outbox", "ls", "--data-dir", str(tmp_path), patch=patch)
    assert_traceback(result, "sqlite3.OperationalError: no such column")


def test_edge_storage_faults_and_our_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line(run_cli("edge_outbox", "ls", "--data-dir", str(tmp_path / "none")), "no outbox database")
    tmp_path.joinpath(db.DB_NAME).write_bytes(b"not a database " * 1000)
    assert_one_line(run_cli("edge_outbox", "ls", "--data-dir", str(tmp_path)), "file is not a database")


def test_edge_a_database_without_the_outbox_tables_is_one_line(tmp_path: Path) -> None:
    """An empty outbox.db, another program's SQLite file, an older outbox's database: "no such table"
    tracebacks before. The ops commands do not upgrade it (`run` does at start)."""
    empty, other, older = tmp_path / "empty", tmp_path / "other", tmp_path / "older"
    empty.mkdir()
    empty.joinpath(db.DB_NAME).write_bytes(b"")
    other.mkdir()
    sqlite3.connect(other / db.DB_NAME).execute("CREATE TABLE photos (name TEXT)").connection.close()
    db.connect(older).execute("DROP TABLE confirm_queue").connection.close()
    receipt = tmp_path / "receipt"
    receipt.write_bytes(b"r")
    for data_dir in (empty, other):
        for args in (("ls",), ("status",), ("export", "--out", str(tmp_path / "b")), ("show", "x")):
            assert_one_line(run_cli("edge_outbox", *args, "--data-dir", str(data_dir)), "is not an outbox database")
    for args in (("export", "--out", str(tmp_path / "b")), ("ls",), ("cancel", "x")):
        result = run_cli("edge_outbox", *args, "--data-dir", str(older))
        assert_one_line(result, "was made by an older edge-outbox (no table confirm_queue): start `edge-outbox run`")
    assert "confirm_queue" not in {name for (name,) in sqlite3.connect(older / db.DB_NAME).execute(
        "SELECT name FROM sqlite_master")}  # fmt: skip


def test_edge_a_damaged_database_is_named_damaged_and_left_as_it_is(tmp_path: Path) -> None:
    """A database with damaged pages (a failing SD card, a power cut on a disk that lies about fsync): `run`
    said `could not commit to ...: database disk image is malformed`, which reads as a full disk, with no word
    on what to do. It still refuses, leaves the file as it is, and says it is damaged and how to get the queue
    back."""
    conn = db.connect(tmp_path)
    rows = [(f"i{n}", "a", "email.send", "accepted", 1, 1, b"x" * 500, 500) for n in range(2000)]
    conn.executemany(
        "INSERT INTO intents(id, app, kind, state, created, updated, payload, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    path = tmp_path / db.DB_NAME
    damaged = bytearray(path.read_bytes())
    damaged[5 * 4096 : 40 * 4096] = b"Z" * (35 * 4096)  # the header is whole: SQLite opens it
    path.write_bytes(damaged)
    wanted = f"{path} is damaged or not an outbox database (database disk image is malformed)"
    for args in (("run", "--listen", f"127.0.0.1:{free_port()}"), ("status",)):
        result = run_cli("edge_outbox", *args, "--data-dir", str(tmp_path))
        assert_one_line(result, wanted)
        assert (
            "keep a copy of the data dir" in result.stderr and "restore the last backup of outbox.db" in result.stderr
        )
    assert path.read_bytes() == damaged


def test_edge_a_data_dir_on_a_read_only_file_system_is_named_so(tmp_path: Path) -> None:
    """A backup or a card mounted read-only to look at: every command said `database error: unable to open
    database file`, of a file that is there and readable."""
    with small_disk(tmp_path / "card") as card:
        db.connect(card).close()
        subprocess.run(["mount", "-o", "remount,ro", str(card)], check=True)
        for args in (("ls",), ("status",)):
            result = run_cli("edge_outbox", *args, "--data-dir", str(card))
            assert_one_line(result, f"{card} is on a read-only file system, and SQLite writes outbox.db-shm")
        run = run_cli("edge_outbox", "run", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(card))
        assert_one_line(run, f"cannot use {card} as the data directory: Read-only file system")


# -- cloud-bridge ------------------------------------------------------------------------------


def test_bridge_bug_shows_its_traceback(tmp_path: Path) -> None:
    made(StoreUrl.sqlite(tmp_path))
    patch = (
        "from cloud_bridge.registry_sqlite import SqliteRegistry\n"
        "def all_devices(self): raise ValueError('a bug in all_devices')\n"
        "SqliteRegistry.all_devices = all_devices"
    )
    result = run_cli("cloud_bridge", "devices", "ls", "--data-dir", str(tmp_path), patch=patch)
    assert_traceback(result, "ValueError: a bug")


def test_bridge_errors_are_one_line(tmp_path: Path) -> None:
    made(StoreUrl.sqlite(tmp_path / "bridge"))
    revoke = ("devices", "revoke", "nope", "--data-dir", str(tmp_path / "bridge"))
    assert_one_line(run_cli("cloud_bridge", *revoke), "no device")
    a_file = tmp_path / "file"
    a_file.write_text("")
    # OSErrors are ours once they cross a boundary: the registry's directory, the certificates' directory.
    enroll_code = ("devices", "enroll-code", "--tenant", "t", "--name", "n", "--data-dir", str(a_file / "data"))
    assert_one_line(run_cli("cloud_bridge", *enroll_code), "Not a directory")
    assert_one_line(run_cli("cloud_bridge", "dev-certs", str(a_file / "certs")), "cannot write")
    assert_one_line(
        run_cli(
            "cloud_bridge",
            "devices",
            "enroll-code",
            "--tenant",
            "t",
            "--name",
            "n",
            "--ttl",
            "soon",
            "--data-dir",
            str(tmp_path),
        ),
        "--ttl",
    )


def test_bridge_operators_commands_refuse_a_store_never_made(store_url: StoreUrl, tmp_path: Path) -> None:
    """A mistyped --data-dir or --store (or the default data dir, relative to where the command runs) named no
    store: the commands made an empty one there and answered from it, `devices ls` an empty fleet, exit 0.
    `devices revoke`, `receipt` and `import` made one too and said `no device 'dev-1'` (the operator looked
    for a wrong id), and then `devices ls` on that path listed an empty fleet."""
    where = ["--store", str(store_url)] if store_url.kind == "postgresql" else ["--data-dir", store_url.location]
    bundle, config = tmp_path / "site.bundle", tmp_path / "bridge.toml"
    bundle.write_bytes(b"a bundle")
    config.write_text("")
    commands = [
        ("devices", "ls", "--json"), ("devices", "show", "dev-1"), ("devices", "diagnose", "dev-1"),
        ("devices", "revoke", "dev-1"),  # it said "no device 'dev-1'": the operator doubted the id, not the store
        ("intents", "ls"), ("intents", "show", "i-1"), ("intents", "retry", "i-1"), ("intents", "cancel", "i-1"),
        ("intents", "purge", "--older-than", "1d"), ("usage",), ("audit",), ("status",),
        ("receipt", "dev-1", "--out", str(tmp_path / "r")),
        ("import", str(bundle), "--config", str(config), "--receipt", str(tmp_path / "r")),
    ]  # fmt: skip
    for command in commands:
        assert_one_line(run_cli("cloud_bridge", *command, *where), f"no bridge store at {store_url}")
    if store_url.kind == "postgresql":
        with psycopg.connect(store_url.conninfo()) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)  # nothing was made there
    else:
        assert not store_url.directory.exists()
    made(store_url)  # a node's first start, or `db upgrade`: the same commands answer
    listed = run_cli("cloud_bridge", "devices", "ls", "--json", *where)
    assert (listed.returncode, listed.stdout.strip(), listed.stderr) == (0, "[]", "")
    assert_one_line(run_cli("cloud_bridge", "intents", "show", "i-1", *where), "no intent i-1")


# -- both --------------------------------------------------------------------------------------


def assert_refused(result: subprocess.CompletedProcess[str], text: str) -> None:
    """A usage error (click's exit 2, with its usage lines) or one of ours (exit 1): never a traceback."""
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: "), result.stderr
    assert text in result.stderr, result.stderr


def test_arguments_past_any_sense_are_refused_not_tracebacks(tmp_path: Path) -> None:
    """Each of these was a traceback (OverflowError, UnicodeEncodeError from a store's driver, ValueError
    from a date format after a purge had run); a non-UTF-8 byte reaches Python as a lone surrogate."""
    edge, bridge = str(tmp_path / "edge"), str(made(StoreUrl.sqlite(tmp_path / "bridge")).directory)
    db.connect(tmp_path / "edge").close()
    cases = [
        (("edge_outbox", "purge", "--older-than", "99999999999w", "--data-dir", edge), "longer than 100 years"),
        (("edge_outbox", "export", "--out", str(tmp_path / "b"), "--max-bytes", "1e309", "--data-dir", edge), "8 PiB"),
        (("edge_outbox", "ls", "--app", "\udcff", "--data-dir", edge), "'\\udcff' is not UTF-8 text"),
        (("edge_outbox", "run", "--data-dir", str(tmp_path / "edge" / "outbox.db" / "x")), "cannot use"),
        (("cloud_bridge", "intents", "purge", "--older-than", "9" * 400, "--data-dir", bridge), "100 years"),
        (("cloud_bridge", "usage", "--until", "99999999999w", "--data-dir", bridge), "neither a day"),
        (("cloud_bridge", "devices", "revoke", "dev-\udced\udca0\udc80", "--data-dir", bridge), "is not UTF-8 text"),
        (("cloud_bridge", "audit", "--device", "", "--data-dir", bridge), "--device: '' is not a valid name"),
        (("cloud_bridge", "audit", "--tenant", "a\x1b[2J", "--data-dir", bridge), "'a\\u001b[2J' is not a valid"),
    ]
    for (package, *args), text in cases:
        assert_refused(run_cli(package, *args), text)
    ttl = ("devices", "enroll-code", "--tenant", "t", "--name", "n", "--ttl", "99999999999w", "--data-dir", bridge)
    assert_refused(run_cli("cloud_bridge", *ttl), "longer than 100 years")
    assert "enroll_codes" not in run_cli("cloud_bridge", "status", "--json", "--data-dir", bridge).stdout


def test_a_tenant_or_device_filter_that_is_no_name_is_refused_by_the_listings(tmp_path: Path) -> None:
    """`devices ls --tenant acme,beta` printed an empty table, exit 0, as for a tenant without devices; `intents
    ls --tenant 'a b'` said "'a b' is not a valid device or intent id". Both now say which flag, as `audit`."""
    bridge = str(made(StoreUrl.sqlite(tmp_path / "bridge")).directory)
    cases = [
        (("devices", "ls", "--tenant", "acme,beta"), "--tenant: 'acme,beta' is not a valid name"),
        (("intents", "ls", "--tenant", "a b"), "--tenant: 'a b' is not a valid name"),
        (("intents", "ls", "--device", "../x"), "--device: '../x' is not a valid name"),
        (("intents", "ls", "--kind", "fax.send"), "'fax.send' is not one of"),  # it printed "no intents", exit 0
        (("usage", "--kind", "fax.send"), "'fax.send' is not one of"),  # an empty table, exit 0
        # "not a valid name: 'acme,beta'": which of --tenant and --device (given both) was not said
        (("usage", "--tenant", "acme,beta", "--device", "dev-1"), "--tenant: 'acme,beta' is not a valid name"),
        (("usage", "--tenant", "acme", "--device", "a\x1b[2J"), "--device: 'a\\u001b[2J' is not a valid name"),
    ]
    for args, text in cases:
        assert_refused(run_cli("cloud_bridge", *args, "--data-dir", bridge), text)


def test_a_new_devices_tenant_the_config_has_no_table_for_is_refused(tmp_path: Path) -> None:
    """`enroll-code --tenant acmee` (a typo) printed a code, and the device it enrolled had every intent rejected
    policy_tenant, for good. Given the nodes' --config, a tenant it has no table for is refused; no code made."""
    bridge = made(StoreUrl.sqlite(tmp_path / "bridge")).directory
    config = tmp_path / "bridge.toml"
    config.write_text('[tenants.acme.policy]\nkinds = ["email.send"]\nemail_domains = ["example.com"]\n')
    where = ("--data-dir", str(bridge), "--config", str(config))
    refused = f"--tenant acmee: {config} has no [tenants.acmee] table (it has: acme); every intent of the device"
    for command in (("devices", "enroll-code"), ("devices", "enroll-ticket", "--out", str(tmp_path / "t"))):
        assert_refused(run_cli("cloud_bridge", *command, "--tenant", "acmee", "--name", "pump-1", *where), refused)
    assert not (tmp_path / "t").exists()
    done = run_cli("cloud_bridge", "devices", "enroll-code", "--tenant", "acme", "--name", "pump-1", *where)
    assert done.returncode == 0 and len(done.stdout.strip()) > 20, done.stderr


def test_edge_a_database_a_later_outbox_marked_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """Going back to an earlier outbox on a database a later one marked as not for it (db.SCHEMA_VERSION): `run`
    and the ops commands took it silently (`run` ran its own schema over it). Now each refuses in one line, before
    it changes anything."""
    later = tmp_path / "later"
    db.connect(later).close()
    with sqlite3.connect(later / db.DB_NAME) as conn:
        conn.execute("PRAGMA user_version = 1000")  # far past this version
        conn.execute("DROP INDEX intents_by_id")  # what the later one made of it: an older outbox would add it back
    conn.close()

    def schema() -> list[tuple[str, int]]:
        with sqlite3.connect(later / db.DB_NAME) as conn:
            rows = conn.execute("SELECT name, (SELECT user_version FROM pragma_user_version) FROM sqlite_master")
            found = sorted(rows.fetchall())
        conn.close()
        return found

    before = schema()
    wanted = "was made by a later edge-outbox (database version 1000;"
    run = ("run", "--listen", f"127.0.0.1:{free_port()}")
    for args in (("ls",), ("status",), ("export", "--out", str(tmp_path / "b")), run):
        assert_one_line(run_cli("edge_outbox", *args, "--data-dir", str(later)), wanted)
    assert schema() == before


def test_edge_run_marks_the_database_and_an_older_one_is_upgraded(tmp_path: Path) -> None:
    older = tmp_path / "older"
    db.connect(older).close()
    with sqlite3.connect(older / db.DB_NAME) as conn:
        conn.execute("PRAGMA user_version = 0")  # as every outbox before SCHEMA_VERSION left it
    conn.close()
    db.connect(older).close()
    with sqlite3.connect(older / db.DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)
    conn.close()


def test_a_fraction_for_a_size_or_a_count_is_refused_not_cut_to_no_limit(tmp_path: Path) -> None:
    """`--max-queue-bytes 0.5` and `max_queue_items = 0.5` in the config file were cut to 0, which these limits
    take for "no limit"; `1.5` to 1 (every intent then held as over the queue's limit), `true` to 1. The outbox
    ran with them without a word. A port held here makes a run that got past its options end at once."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        listen = f"127.0.0.1:{held.getsockname()[1]}"
        edge = str(tmp_path / "edge")
        for size in ("0.5", "1.5", "0.3K"):
            result = run_cli("edge_outbox", "run", "--data-dir", edge, "--listen", listen, "--max-queue-bytes", size)
            assert_refused(result, f"'{size}' is not a whole number of bytes")
        for value in ("0.5", "1.5", "true"):
            config = tmp_path / "config.toml"
            config.write_text(f'listen = "{listen}"\nmax_queue_items = {value}\n')
            result = run_cli("edge_outbox", "--config", str(config), "run", "--data-dir", edge)
            assert_refused(result, f"max_queue_items = {value.capitalize()}: must be a whole number")
        assert_refused(run_cli("edge_outbox", "run", "--data-dir", edge, "--listen", listen), "already in use")
