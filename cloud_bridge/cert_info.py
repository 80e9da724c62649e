"""What the bridge's TLS certificate says, for the operator who renewed it: the names it serves, until when.

A reload reads the certificate again (a renewal keeps its paths), and `cloud-bridge reload` answered only
"reloaded": the operator could not tell whether the renewed file was the one taken. The answer names the
certificate now, and a reload whose certificate is out of its validity (a stale or wrong file: every device
would refuse it at its next connect) is refused, the running one staying in force.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from cloud_bridge.errors import ConfigError
from intent_contract.timefmt import format_ms


def describe(names: Sequence[str], not_after: str) -> str:
    """The line naming a certificate: in the reload's log, and printed by `cloud-bridge reload` from its answer."""
    return f"certificate {', '.join(names) or '(no names)'} valid until {not_after}"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """The served certificate: its DNS names and addresses, validity, and SHA-256 fingerprint (hex)."""

    names: tuple[str, ...]
    not_before: float
    not_after: float
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "not_before": format_ms(int(self.not_before * 1000)),
            "not_after": format_ms(int(self.not_after * 1000)),
            "sha256": self.sha256,
        }

    def line(self) -> str:
        return describe(self.names, format_ms(int(self.not_after * 1000)))

    def check_valid(self, path: Path, now: float) -> None:
        """ConfigError when `now` is outside the certificate's validity."""
        if now >= self.not_after:
            raise ConfigError(
                f"TLS certificate {path} expired at {format_ms(int(self.not_after * 1000))}: devices would refuse it",
                code="tls_config",
            )
        if now < self.not_before:
            raise ConfigError(
                f"TLS certificate {path} is not valid before {format_ms(int(self.not_before * 1000))}: devices would"
                " refuse it",
                code="tls_config",
            )


def read_cert(path: Path) -> CertInfo:
    """The first certificate in the PEM file `path` (the server's; a chain follows it). ConfigError when there
    is none (the TLS context loaded it, so only a file changed meanwhile gets here)."""
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise ConfigError(f"cannot read TLS certificate {path}: {exc}", code="tls_config") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        addresses = (str(a) for a in san.get_values_for_type(x509.IPAddress))
        names = (*san.get_values_for_type(x509.DNSName), *addresses)
    except x509.ExtensionNotFound:
        names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    return CertInfo(
        names,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        cert.fingerprint(hashes.SHA256()).hex(),
    )


def valid_cert(path: Path, now: float) -> CertInfo:
    """`read_cert`, ConfigError when `now` is outside its validity (for a reload: the running one stays)."""
    info = read_cert(path)
    info.check_valid(path, now)
    return info
