"""sms.send through a Twilio-compatible REST API (Messages resource, form-encoded, basic auth)."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx

from cloud_bridge.config import parse_section
from cloud_bridge.config.integrations import SID, SmsConfig
from cloud_bridge.errors import PermanentError, TransientError
from cloud_bridge.integrations.base import Job, Outcome
from cloud_bridge.integrations.http_status import parse_retry_after, status_error
from cloud_bridge.integrations.tls import tls_context
from cloud_bridge.secrets import Secret, redact_in_logs
from intent_contract import json_bounded
from intent_contract.errors import DecodeError

log = logging.getLogger(__name__)

_E164: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")
_MAX_ANSWER: Final = 64 * 1024  # a Messages resource is about 1 KiB; only its sid and error code are read


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
    def from_settings(cls, config: SmsConfig) -> SmsIntegration:
        """Build from the validated `[integrations.sms]`."""
        return cls(
            base_url=config.base_url,
            account_sid=config.account_sid,
            auth_token=config.needed("auth_token"),
            sender=config.sender,
            ca_file=config.ca_file,
            concurrency=config.concurrency,
            timeout=config.timeout,
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any], env: Mapping[str, str]) -> SmsIntegration:
        """Build from a plain `[integrations.sms]` table; ConfigError with every problem."""
        return cls.from_settings(parse_section(SmsConfig, section, env, "integrations.sms"))

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
        sid = _answer(response).get("sid")
        # Only a plain id goes into the audit; anything else could be an echo of the request.
        if isinstance(sid, str) and SID.fullmatch(sid) and self._token.reveal() not in sid:
            return sid
        return "unknown"

    @staticmethod
    def _provider_code(response: httpx.Response) -> int | None:
        code = _answer(response).get("code")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    async def aclose(self) -> None:
        await self._client.aclose()


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The provider's JSON object, or {} for anything else (too large, too deep, not JSON, not an object)."""
    try:
        document = json_bounded.loads(response.content, max_bytes=_MAX_ANSWER)
    except DecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def transport_error(exc: httpx.HTTPError, host: str, prefix: str = "http") -> TransientError | PermanentError:
    """Map an httpx exception to a bridge error naming only its class and the host."""
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{exc.__class__.__name__} talking to {host}", code=f"{prefix}_timeout")
    if isinstance(exc, httpx.TransportError):
        return TransientError(f"{exc.__class__.__name__} talking to {host}", code=f"{prefix}_connection")
    return PermanentError(f"{exc.__class__.__name__} talking to {host}", code=f"{prefix}_error")
