"""email.send over SMTP (aiosmtplib): STARTTLS, implicit TLS or plain, optional AUTH.

The From is what policy decided (`job.overrides["from"]`). The Message-ID is derived from the
idempotency key, so a resend after a lost reply carries the same id and receivers can drop it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import StrEnum
from typing import Any, Final

import aiosmtplib

from cloud_bridge.config import parse_section
from cloud_bridge.config.integrations import SmtpConfig
from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.faults import talking_to
from cloud_bridge.integrations.http_status import CALL_TIMEOUTS
from cloud_bridge.integrations.smtp_message import build_message, check_head, message_id
from cloud_bridge.integrations.threads import BoundedThreads
from cloud_bridge.integrations.tls import tls_context
from cloud_bridge.secrets import Secret, redact_in_logs

__all__ = ["Security", "SmtpIntegration", "build_message", "check_head", "message_id"]

log = logging.getLogger(__name__)

# The answer to a RCPT past the relay's limit of recipients per message (RFC 5321 4.5.3.1.10; Gmail's is 100):
# not a refusal of that recipient, who gets the message in a further transaction.
TOO_MANY_RECIPIENTS: Final = 452


class Security(StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


class MachineName:
    """The name the bridge greets a relay with (EHLO): the machine's FQDN, looked up once, in a daemon thread of
    its own started by the first email; the host name (no lookup) until that lookup has answered.

    aiosmtplib looked the FQDN up (socket.getfqdn: a reverse lookup of the host name) for every message, in the
    event loop's default pool and outside its own timeout: while reverse DNS did not answer, every email timed
    out (smtp_connection) with the relay up, each leaving a thread of that pool blocked and its socket open.
    """

    def __init__(self) -> None:
        self.fqdn: str | None = None
        self._started = False
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._look_up, name="smtp-fqdn", daemon=True).start()
        return self.fqdn or socket.gethostname()

    def _look_up(self) -> None:
        self.fqdn = socket.getfqdn()


@dataclass(slots=True)
class Delivery:
    """What the relay took of one email: its answer to the data of each transaction, how many recipients it
    refused, and how many were never sent because a later transaction broke off (and why)."""

    answers: list[str] = field(default_factory=list)
    refused: int = 0
    unsent: int = 0
    broke: str = ""

    def detail(self) -> str:
        parts = [self.answers[0] if self.answers else ""]
        if len(self.answers) > 1:
            parts.append(f"in {len(self.answers)} transactions")
        if self.refused:
            parts.append(f"{self.refused} recipients refused")
        if self.unsent:
            parts.append(f"{self.unsent} recipients not sent ({self.broke})")
        return "; ".join(parts)


def next_transaction(pending: list[str], errors: Mapping[str, aiosmtplib.SMTPResponse]) -> tuple[list[str], int]:
    """After a transaction to `pending` the relay took, with `errors` its refusals: the recipients for a further
    transaction (those past its limit per message, in order) and how many it refused."""
    over = [r for r in pending if r in errors and errors[r].code == TOO_MANY_RECIPIENTS]
    return over, len(errors) - len(set(over))


def relay_text(text: str) -> str:
    """A relay's reply text as it meant it: aiosmtplib keeps bytes that are not UTF-8 as lone surrogates, and a
    Latin-1 relay's "250 Nachricht \\xfcbernommen" reached the audit and the device as `\\udcfcbernommen`."""
    if text.isascii():
        return text
    raw = text.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # the usual 8-bit charset of relays that do not speak UTF-8; never fails


class SmtpIntegration:
    """Sends email.send jobs through one SMTP relay."""

    kind = "email.send"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: Security,
        username: str | None = None,
        password: Secret | None = None,
        context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        concurrency: int = 4,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.concurrency = concurrency
        self._host, self._port, self._security = host, port, security
        self._username, self._password = username, password
        self._context = context or tls_context(None)
        self._timeout = timeout
        self._lookups = BoundedThreads(concurrency, "smtp-dns")
        self._name = MachineName()
        self._now = now
        self._masks: list[Secret] = []
        if password is not None:
            plain = password.reveal()
            login = base64.b64encode(plain.encode()).decode()
            auth_plain = base64.b64encode(f"\0{username}\0{plain}".encode()).decode()
            self._masks = [Secret(plain), Secret(login), Secret(auth_plain)]
            redact_in_logs([plain, login, auth_plain])

    @classmethod
    def from_settings(cls, config: SmtpConfig) -> SmtpIntegration:
        """Build from the validated `[integrations.smtp]`."""
        return cls(
            host=config.host,
            port=config.effective_port,
            security=Security(config.security),
            username=config.username,
            password=config.secret("password"),
            context=tls_context(config.ca_file),
            timeout=config.timeout,
            concurrency=config.concurrency,
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> SmtpIntegration:
        """Build from a plain `[integrations.smtp]` table; ConfigError with every problem."""
        return cls.from_settings(parse_section(SmtpConfig, section, env, "integrations.smtp"))

    def _scrub(self, text: str) -> str:
        text = relay_text(text)
        for value in self._masks:
            text = text.replace(value.reveal(), "***")
        return text[:200]

    def _response_error(self, code: int, message: str) -> TransientError | PermanentError:
        detail = f"SMTP {code} {self._scrub(message)}".strip()
        if 400 <= code < 500:
            return TransientError(detail, code=f"smtp_{code}")
        if 500 <= code < 600:
            return PermanentError(detail, code=f"smtp_{code}")
        return TransientError(detail, code="smtp_protocol")

    def _all_refused(self, refusals: list[aiosmtplib.SMTPRecipientRefused]) -> TransientError | PermanentError:
        """Every recipient refused: retried when one was refused for now (4xx), even beside some refused for good.

        Nobody took the message, so a retry sends nobody a second copy; failing it for the 5xx of a mistyped
        address kept it from a mailbox that was full for a moment (the worst code was taken before December 2026).
        """
        for_now = [r for r in refusals if 400 <= r.code < 500]
        said = max(for_now or refusals, key=lambda r: (r.code >= 500, r.code))
        note = f" ({len(for_now)} for now)" if for_now and len(for_now) < len(refusals) else ""
        return self._response_error(said.code, f"{said.message}: all {len(refusals)} recipients refused{note}")

    async def execute(self, job: Job) -> Outcome:
        """Send one email; a 5xx to the message fails it, 4xx, a refused session and connection trouble are retried."""
        message, recipients = build_message(job, self._now())
        try:
            delivery = await self._send(message, recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise self._all_refused(exc.recipients) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise PermanentError(f"SMTP server lacks a required feature: {self._scrub(str(exc))}",
                                 code="smtp_not_supported") from None  # fmt: skip
        except aiosmtplib.SMTPAuthenticationError as exc:
            # The relay refused the bridge's credential, not the message: retried (as http_401 and sms_401 are),
            # so that intents wait through a password rotation instead of failing.
            detail = f"SMTP {exc.code} {self._scrub(exc.message)}: the relay refused the bridge's credential"
            raise TransientError(detail, code=f"smtp_{exc.code}") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise self._response_error(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            detail = talking_to(exc, f"{self._host}:{self._port}")
            if type(exc) is aiosmtplib.SMTPException:  # aiosmtplib's words: no STARTTLS or AUTH offered, and the like
                detail += f": {self._scrub(str(exc))}"
            raise TransientError(detail, code="smtp_connection") from None
        except ValueError:  # after ssl.SSLError: a certificate that fails verification is a ValueError too
            # aiosmtplib's own check of an address it is to put on a command line ("a<@x" reads as "a<"):
            # it fails the same way on every attempt.
            raise PermanentError("an address cannot go on an SMTP command line", code="bad_message") from None
        detail = delivery.detail()
        log.debug("email.send %s accepted by %s: %s", message["Message-ID"], self._host, detail)
        return Outcome(self._scrub(detail))

    async def _send(self, message: EmailMessage, recipients: list[str]) -> Delivery:
        """Send over a connection of its own, in as many transactions as the relay's limit of recipients per
        message needs (before, those past it were counted refused and never got the message).

        aiosmtplib's timeout bounds each reply, and a message takes one per recipient (up to 300) and about
        eight more: a relay answering each just in time held one email, and its slot, for hours. Up to the
        relay's answer to the data the call is bounded too. Not the QUIT after it: the message is the relay's
        by then, and a timeout there would have it sent again (aiosmtplib.send's QUIT was inside the bound).
        For the same reason, once the relay has taken a transaction's data, a later one failing (or the bound
        passing) is no error: its recipients are counted not sent.
        """
        sock: socket.socket | None = None
        client: aiosmtplib.SMTP | None = None  # once made, it owns the socket: its transport closes it
        # Each address once: with one in both `to` and `bcc`, a 452 to its second RCPT after a 250 to its first
        # sent it the message in the next transaction again.
        delivery, pending = Delivery(), list(dict.fromkeys(recipients))
        try:
            async with asyncio.timeout(CALL_TIMEOUTS * self._timeout):  # its TimeoutError is an OSError
                sock = await self._connect()
                client = aiosmtplib.SMTP(
                    hostname=self._host,  # for TLS: SNI and the certificate's check
                    sock=sock,
                    local_hostname=self._name(),
                    username=self._username,
                    password=self._password.reveal() if self._password is not None else None,
                    use_tls=self._security is Security.TLS,
                    start_tls=self._security is Security.STARTTLS,
                    tls_context=self._context,
                    timeout=self._timeout,
                )
                sock = None
                await self._open(client)
                while pending:  # each transaction the relay takes has at least one recipient fewer
                    errors, response = await client.send_message(
                        message, sender=str(message["From"]), recipients=pending
                    )
                    delivery.answers.append(response)
                    pending, refused = next_transaction(pending, errors)
                    delivery.refused += refused
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):  # sent: only QUIT's own timeout applies
                await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            if not delivery.answers:
                raise
            delivery.unsent, delivery.broke = len(pending), exc.__class__.__name__
        finally:
            if client is not None:
                client.close()
            if sock is not None:  # connected, but no client took it
                sock.close()
        return delivery

    async def _open(self, client: aiosmtplib.SMTP) -> None:
        """The session before any message: greeting, EHLO, STARTTLS, AUTH. A 5xx there refuses the bridge's session
        (its address, its EHLO name, the relay's TLS), not a message: retried as a refused AUTH is, where a 501 to
        STARTTLS or a 554 greeting failed every email meanwhile for good, and no STARTTLS offered was retried."""
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:  # with neither STARTTLS nor AUTH, it came with the first MAIL
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not client.is_connected:
                        raise
                    await client.helo()  # as aiosmtplib does: a relay that does not speak ESMTP
        except aiosmtplib.SMTPAuthenticationError:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if not 500 <= exc.code < 600:
                raise
            detail = f"SMTP {exc.code} {self._scrub(exc.message)}: the relay refused the bridge's session"
            raise TransientError(detail, code=f"smtp_{exc.code}") from None

    async def _connect(self) -> socket.socket:
        """A socket connected to the relay within `timeout`, its name looked up in the integration's own threads.

        aiosmtplib would look it up with loop.getaddrinfo, on the event loop's default pool, where device
        authentication, enrollment and admission run: while the relay's name did not resolve (a DNS outage, a
        tenant's own slow name server), as many emails as that pool has threads stopped every device connecting.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            infos = await self._lookups.run(lambda: socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM))
            error = OSError(f"no address for {self._host}")
            for family, kind, proto, _, address in infos:
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, address)
                except OSError as exc:
                    sock.close()
                    error = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                return sock
        raise error

    async def aclose(self) -> None:
        """Nothing to close: one connection per message."""
