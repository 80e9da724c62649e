"""`cloud-bridge dev-certs`: a local CA and a server certificate, for trying the bridge out.

Not for production: the CA key is written next to the certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_bridge.errors import ConfigError

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Paths written by `write_dev_certs`."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def parse_owner(text: str) -> tuple[int, int]:
    """'UID' or 'UID:GID' (numbers, as a container image's user is known) -> (uid, gid); gid -1 keeps the group."""
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not (gid.isdigit() or not gid):
        raise ConfigError(f"--owner {text!r}: expected UID or UID:GID as numbers, e.g. 10001")
    return int(uid), int(gid) if gid else -1


def _write(path: Path, data: bytes, *, private: bool = False, owner: tuple[int, int] | None = None) -> None:
    """Write a new file (its mode and owner set before any byte is in it) and rename it over `path`.

    Not `path` opened with O_TRUNC: that kept the mode of a file already there, so `dev-certs` run again over a
    key file that was 0644 (an older copy, a `cp`, a chmod for a container) wrote the new private key into a
    file every local user could read; and anyone who had it open kept reading it. A symlink at `path` is
    replaced, not followed.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        aside.unlink(missing_ok=True)  # left by a killed run that had our pid
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        aside.replace(path)
    except PermissionError as exc:
        hint = " (giving files to another user needs root)" if owner is not None else ""
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}{hint}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        aside.unlink(missing_ok=True)


def write_dev_certs(
    directory: Path,
    hosts: Sequence[str] = (),
    *,
    now: datetime.datetime,
    days: int = 825,
    owner: tuple[int, int] | None = None,
) -> DevCerts:
    """Write ca.pem, ca.key, server.pem (certificate + CA) and server.key into `directory`.

    The keys are readable by their owner only: `owner` (uid, gid) gives every file to the user the
    bridge runs as, e.g. a container's, when that is not the user running this.
    """
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    if any(not host or "/" in host for host in names):
        raise ConfigError("host names must be non-empty and contain no '/'")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write to {directory}: {exc.strerror or exc}") from exc
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud-bridge dev CA")])
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital_signature, key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = DevCerts(directory / "ca.pem", directory / "ca.key", directory / "server.pem", directory / "server.key")
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(paths.ca_cert, ca_pem, owner=owner)
    _write(paths.ca_key, _pem_key(ca_key), private=True, owner=owner)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM) + ca_pem, owner=owner)
    _write(paths.key, _pem_key(key), private=True, owner=owner)
    return paths
