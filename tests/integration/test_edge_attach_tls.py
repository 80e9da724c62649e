"""Attach mode to a Mosquitto that asks its clients for a certificate (require_certificate), as sites that
authenticate clients by certificate run it."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.attach import assert_refused_at_start, mosquitto
from tests.support.edge import Client, OutboxProcess, email, stored_ids
from tests.support.net import free_port, wait_until


@pytest.fixture
def certificate_mosquitto(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[tuple[int, int]]:
    """A plain listener for the test's apps and a TLS one that takes only clients with a certificate of the CA."""
    plain, tls = free_port(), free_port()
    text = (
        f"per_listener_settings true\nlistener {plain} 127.0.0.1\nallow_anonymous true\n"
        f"listener {tls} 127.0.0.1\nallow_anonymous true\ncafile {server_cert_files['ca']}\n"
        f"certfile {server_cert_files['cert']}\nkeyfile {server_cert_files['key']}\nrequire_certificate true\n"
        # As root, Mosquitto switches to its own user before it loads the certificates (pytest's directory is
        # private): `user root` keeps it root.
        "persistence false\nmax_queued_messages 0\nuser root\n"
    )
    with mosquitto(tmp_path / "mosquitto-certs.conf", text, plain, tls):
        yield plain, tls


def client_cert(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    issued = ca.issue_cert("edge-outbox.site.example")
    cert, key = directory / "client.pem", directory / "client.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def test_attach_with_a_client_certificate_to_a_broker_that_asks_for_one(
    tmp_path: Path, ca: trustme.CA, certificate_mosquitto: tuple[int, int], server_cert_files: dict[str, Path]
) -> None:
    """The outbox had no way to show a certificate: such a broker ended each handshake (`tlsv13 alert certificate
    required`), retried for ever, and the site had to open a listener without client authentication for it."""
    plain, tls = certificate_mosquitto
    cert, key = client_cert(ca, tmp_path)
    app = Client(plain, "app").connect()
    app.subscribe("outbox/hvac/status/#")
    attach = ("--attach-ca", str(server_cert_files["ca"]), "--attach-cert", str(cert), "--attach-key", str(key))
    with OutboxProcess(tmp_path / "data", tls, f"--attach=mqtts://127.0.0.1:{tls}", *attach) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="attached with a client certificate")
        app.publish("outbox/hvac/email.send", email("by-certificate"), name="by-certificate")
        wait_until(lambda: app.status_of("by-certificate") == ["accepted"], what="accepted status")
        assert stored_ids(outbox.data_dir)["by-certificate"] == "accepted"
    app.close()


def test_client_certificate_settings_that_cannot_work_stop_the_outbox_in_one_line(
    tmp_path: Path, ca: trustme.CA
) -> None:
    cert, key = client_cert(ca, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _other_cert, other_key = client_cert(trustme.CA(), other)  # another certificate's key
    cases = [
        (["--attach=mqtt://127.0.0.1:1", "--attach-cert", str(cert)], "--attach-cert is for a TLS broker"),
        (["--attach=mqtts://127.0.0.1:1", "--attach-key", str(key)], "--attach-key is the key of --attach-cert"),
        (
            ["--attach=mqtts://127.0.0.1:1", "--attach-cert", str(cert), "--attach-key", str(other_key)],
            "cannot load a client certificate (PEM) and its key",
        ),
        (["--attach=mqtts://127.0.0.1:1", "--attach-cert", str(cert)], "cannot load a client certificate"),  # no key
    ]
    assert_refused_at_start(tmp_path / "data", cases)
