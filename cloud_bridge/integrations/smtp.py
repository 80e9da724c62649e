"""email.send over SMTP (aiosmtplib): STARTTLS, implicit TLS or plain, optional AUTH.

The From is what policy decided (`job.overrides["from"]`). The Message-ID is derived from the
idempotency key, so a resend after a lost reply carries the same id and receivers can drop it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate
from enum import StrEnum
from typing import Any

import aiosmtplib

from cloud_bridge.errors import ConfigError, PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.http import positive, tls_context
from cloud_bridge.secrets import Secret, redact_in_logs, resolve_secret

log = logging.getLogger(__name__)

_KEYS = frozenset({"host", "port", "security", "username", "password_env", "password_file", "password", "ca_file",
                   "timeout", "concurrency"})  # fmt: skip


class Security(StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


def message_id(idempotency_key: str) -> str:
    """A Message-ID that is the same for every send of one intent attempt."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@edge-outbox>"


def _list(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def build_message(job: Job, now: float) -> tuple[EmailMessage, list[str]]:
    """The message and its envelope recipients (to, cc and bcc; bcc never in a header)."""
    payload = job.payload
    sender = job.overrides.get("from")
    if not isinstance(sender, str) or not sender:
        raise PermanentError("policy decided no from-address for this email", code="policy_from")
    to, cc, bcc = _list(payload.get("to")), _list(payload.get("cc")), _list(payload.get("bcc"))
    message = EmailMessage()
    try:
        message["From"] = sender
        message["To"] = ", ".join(to)
        if cc:
            message["Cc"] = ", ".join(cc)
        if payload.get("reply_to"):
            message["Reply-To"] = str(payload["reply_to"])
        message["Subject"] = str(payload.get("subject", ""))
        message["Date"] = formatdate(now, usegmt=True)
        message["Message-ID"] = message_id(job.idempotency_key)
        text, html = payload.get("text"), payload.get("html")
        if text is not None:
            message.set_content(str(text))
            if html is not None:
                message.add_alternative(str(html), subtype="html")
        else:
            message.set_content(str(html or ""), subtype="html")
    except (ValueError, TypeError, IndexError) as exc:
        # e.g. a line break in a header: refused by the email package, never sent.
        raise PermanentError(f"cannot build the message: {exc.__class__.__name__}", code="bad_message") from None
    return message, to + cc + bcc


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
        self._now = now
        self._masks: list[Secret] = []
        if password is not None:
            plain = password.reveal()
            login = base64.b64encode(plain.encode()).decode()
            auth_plain = base64.b64encode(f"\0{username}\0{plain}".encode()).decode()
            self._masks = [Secret(plain), Secret(login), Secret(auth_plain)]
            redact_in_logs([plain, login, auth_plain])

    @classmethod
    def from_config(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> SmtpIntegration:
        """Build from `[integrations.smtp]`; raises ConfigError."""
        unknown = set(section) - _KEYS
        if unknown:
            raise ConfigError(f"integrations.smtp: unknown keys {sorted(unknown)}")
        host = section.get("host")
        if not isinstance(host, str) or not host:
            raise ConfigError("integrations.smtp.host is required")
        try:
            security = Security(section.get("security", "starttls"))
        except ValueError:
            raise ConfigError(f"integrations.smtp.security must be one of {[s.value for s in Security]}") from None
        default_port = {Security.STARTTLS: 587, Security.TLS: 465, Security.NONE: 25}[security]
        port = positive(section, "port", default_port, "integrations.smtp")
        username = section.get("username")
        if username is not None and (not isinstance(username, str) or not username):
            raise ConfigError("integrations.smtp.username must be a string")
        password = resolve_secret(section, "password", env, required=username is not None)
        if password is not None and username is None:
            raise ConfigError("integrations.smtp: a password needs a username")
        return cls(
            host=host,
            port=port,
            security=security,
            username=username,
            password=password,
            context=tls_context(section.get("ca_file")),
            timeout=float(positive(section, "timeout", 30, "integrations.smtp")),
            concurrency=positive(section, "concurrency", 4, "integrations.smtp"),
        )

    def _scrub(self, text: str) -> str:
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

    async def execute(self, job: Job) -> Outcome:
        """Send one email; 5xx fails, 4xx and connection trouble are retried."""
        message, recipients = build_message(job, self._now())
        try:
            errors, response = await aiosmtplib.send(
                message,
                sender=str(message["From"]),
                recipients=recipients,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password.reveal() if self._password is not None else None,
                use_tls=self._security is Security.TLS,
                start_tls=self._security is Security.STARTTLS,
                tls_context=self._context,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({r.code for r in exc.recipients})
            worst = max(codes, key=lambda c: (c >= 500, c))
            raise self._response_error(worst, f"all {len(exc.recipients)} recipients refused") from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise PermanentError(f"SMTP server lacks a required feature: {self._scrub(str(exc))}",
                                 code="smtp_not_supported") from None  # fmt: skip
        except aiosmtplib.SMTPResponseException as exc:
            raise self._response_error(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise TransientError(f"{exc.__class__.__name__} talking to {self._host}:{self._port}",
                                 code="smtp_connection") from None  # fmt: skip
        refused = f"; {len(errors)} recipients refused" if errors else ""
        log.debug("email.send %s accepted by %s%s", message["Message-ID"], self._host, refused)
        return Outcome(f"{self._scrub(response)}{refused}"[:200])

    async def aclose(self) -> None:
        """Nothing to close: one connection per message."""
