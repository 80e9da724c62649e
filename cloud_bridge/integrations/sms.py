"""sms.send through a Twilio-compatible REST API (Messages resource, form-encoded, basic auth)."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx

from cloud_bridge.errors import ConfigError, PermanentError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.http import parse_retry_after, positive, status_error, tls_context, transport_error
from cloud_bridge.secrets import Secret, redact_in_logs, resolve_secret

log = logging.getLogger(__name__)

_KEYS: Final = frozenset({"base_url", "account_sid", "auth_token", "auth_token_env", "auth_token_file", "from",
                          "ca_file", "concurrency", "timeout"})  # fmt: skip
_SID: Final = re.compile(r"^[A-Za-z0-9]{1,64}$")
_E164: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")


class SmsIntegration:
    """Sends sms.send jobs; the intent's idempotency key goes as I-Twilio-Idempotency-Token."""

    kind = "sms.send"

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: Secret,
        sender: str,
        ca_file: str | None = None,
        concurrency: int = 4,
        timeout: float = 30.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.concurrency = concurrency
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._host = httpx.URL(base_url).host
        self._sender = sender
        self._token = auth_token
        self._now = now
        basic = base64.b64encode(f"{account_sid}:{auth_token.reveal()}".encode()).decode()
        redact_in_logs([auth_token.reveal(), basic])
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(account_sid, auth_token.reveal()),
            verify=tls_context(ca_file),
            trust_env=False,
            follow_redirects=False,
            timeout=timeout,
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> SmsIntegration:
        """Build from `[integrations.sms]`; raises ConfigError."""
        unknown = set(section) - _KEYS
        if unknown:
            raise ConfigError(f"integrations.sms: unknown keys {sorted(unknown)}")
        base_url = section.get("base_url", "https://api.twilio.com")
        if not isinstance(base_url, str) or not base_url.startswith("https://"):
            raise ConfigError("integrations.sms.base_url must be an https:// URL")
        sid = section.get("account_sid")
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            raise ConfigError("integrations.sms.account_sid must be letters and digits")
        sender = section.get("from")
        if not isinstance(sender, str) or not sender:
            raise ConfigError("integrations.sms.from must be a sender number or id")
        token = resolve_secret(section, "auth_token", env)
        assert token is not None
        ca_file = section.get("ca_file")
        return cls(
            base_url=base_url,
            account_sid=sid,
            auth_token=token,
            sender=sender,
            ca_file=ca_file if isinstance(ca_file, str) else None,
            concurrency=positive(section, "concurrency", 4, "integrations.sms"),
            timeout=float(positive(section, "timeout", 30, "integrations.sms")),
        )

    async def execute(self, job: Job) -> Outcome:
        """Create one message; 2xx is an Outcome with the provider's message sid."""
        to, text = job.payload.get("to"), job.payload.get("text")
        if not isinstance(to, str) or not _E164.fullmatch(to) or not isinstance(text, str) or not text:
            raise PermanentError("sms.send needs an E.164 'to' and a non-empty 'text'", code="bad_message")
        try:
            response = await self._client.post(
                self._url,
                data={"To": to, "From": self._sender, "Body": text},
                headers={"I-Twilio-Idempotency-Token": job.idempotency_key},
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._host, prefix="sms") from None
        status = response.status_code
        log.debug("sms.send to provider %s answered %d", self._host, status)
        if 200 <= status < 300:
            return Outcome(f"HTTP {status} sid {self._message_sid(response)}")
        provider_code = self._provider_code(response)
        note = f" (provider code {provider_code})" if provider_code is not None else ""
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._now())
        raise status_error(status, retry_after, "sms", note)

    def _message_sid(self, response: httpx.Response) -> str:
        try:
            sid = response.json().get("sid")
        except (ValueError, AttributeError):
            return "unknown"
        # Only a plain id goes into the audit; anything else could be an echo of the request.
        if isinstance(sid, str) and _SID.fullmatch(sid) and self._token.reveal() not in sid:
            return sid
        return "unknown"

    @staticmethod
    def _provider_code(response: httpx.Response) -> int | None:
        try:
            code = response.json().get("code")
        except (ValueError, AttributeError):
            return None
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    async def aclose(self) -> None:
        await self._client.aclose()
