"""`cloud-bridge health`: GET /healthz over verified TLS, for container health checks and supervisors.

A probe from the bridge's own host reaches it at 127.0.0.1 or localhost while its certificate names
the public host: `server_name` checks the certificate against that name (and sends it as SNI), so the
probe never has to switch verification off.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cloud_bridge.errors import ConfigError, TransientError
from intent_contract.readable import readable


def check(url: str, *, ca: Path | None = None, server_name: str | None = None, timeout: float = 5.0) -> None:
    """Return when `url` answers 200 over TLS verified against `ca` (or the system's CAs); else raise."""
    if urlsplit(url).scheme != "https":
        raise ConfigError(f"--url {url!r}: the bridge serves /healthz over HTTPS only")
    verify: ssl.SSLContext | bool = True
    if ca is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ca {ca}: not a readable PEM CA certificate ({exc})") from None
    extensions = {"sni_hostname": server_name} if server_name else {}
    try:
        with httpx.Client(verify=verify, timeout=timeout) as client:
            response = client.get(url, extensions=extensions)
    except httpx.HTTPError as exc:
        raise TransientError(f"{url}: {exc or type(exc).__name__}{_what_to_do(str(exc))}") from None
    if response.status_code != 200:
        problems = _problems(response)
        raise TransientError(f"{url} answered HTTP {response.status_code}{': ' + problems if problems else ''}")


def _problems(response: httpx.Response) -> str:
    """What an unhealthy node's /healthz says is wrong, for the health check's log (a container's `docker inspect`
    showed "answered HTTP 503" and no reason). Bounded and made readable: the answer is the server's to choose."""
    try:
        found = response.json().get("problems")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(found, list):
        return ""
    return readable("; ".join(str(p) for p in found))[:500]


def _what_to_do(failure: str) -> str:
    """The option that fixes a certificate the probe could not verify (the error alone named neither), or why a
    node closed the probe before TLS."""
    if "UNEXPECTED_EOF" in failure or "EOF occurred in violation of protocol" in failure:
        # A node closes a connection without a PROXY header from an address in its proxy_protocol_from, before TLS:
        # behind a balancer on the node's own host, probing localhost met only the TLS library's words for it.
        return (
            " (closed before TLS: a node does so to an address in its [bridge] proxy_protocol_from that sends no"
            " PROXY header; probe from another address, or the metrics listener: GET http://METRICS/healthz)"
        )
    if "CERTIFICATE_VERIFY_FAILED" not in failure:
        return ""
    if "not valid for" in failure or "Hostname mismatch" in failure:
        return " (probing by another name than the certificate's? --server-name NAME checks it for NAME)"
    return " (a private CA, such as dev-certs' ca.pem? --ca FILE trusts it)"
