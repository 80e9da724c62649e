"""sms.send through a Twilio-compatible REST API (Messages resource, form-encoded, basic auth)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from cloud_bridge.integrations.faults import talking_to
from cloud_bridge.integrations.http_status import CALL_TIMEOUTS, parse_retry_after, status_error
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
        self._timeout = timeout
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
        request = self._client.build_request(
            "POST",
            self._url,
            data={"To": to, "From": self._sender, "Body": text},
            # identity: the answer is read raw and bounded, so a compressed one (a bomb) is never inflated
            headers={"I-Twilio-Idempotency-Token": job.idempotency_key, "Accept-Encoding": "identity"},
        )
        loop = asyncio.get_running_loop()
        # httpx bounds each wait, not the call; the body's read is within the call's bound too: after an
        # answer's head at the bound's end, the body was given `timeout` more (four of them in all).
        deadline = loop.time() + CALL_TIMEOUTS * self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._host, prefix="sms") from None
        except TimeoutError:
            raise TransientError(f"no answer from {self._host} in time", code="sms_timeout") from None
        try:
            answer = _answer(await _bounded_body(response, min(self._timeout, deadline - loop.time())))
        finally:
            await response.aclose()
        status = response.status_code
        log.debug("sms.send to provider %s answered %d", self._host, status)
        if 200 <= status < 300:
            return Outcome(f"HTTP {status} sid {self._message_sid(answer)}")
        provider_code = self._provider_code(answer)
        note = f" (provider code {provider_code})" if provider_code is not None else ""
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._now())
        raise status_error(status, retry_after, "sms", note)

    def _message_sid(self, answer: dict[str, Any]) -> str:
        sid = answer.get("sid")
        # Only a plain id goes into the audit; anything else could be an echo of the request.
        if isinstance(sid, str) and SID.fullmatch(sid) and self._token.reveal() not in sid:
            return sid
        return "unknown"

    @staticmethod
    def _provider_code(answer: dict[str, Any]) -> int | None:
        code = answer.get("code")
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    async def aclose(self) -> None:
        await self._client.aclose()


async def _bounded_body(response: httpx.Response, seconds: float) -> bytes:
    """The answer's body as sent, if it is at most _MAX_ANSWER bytes, uncompressed and read within `seconds`;
    else b"". The whole body was read into memory and inflated before its size was checked: 577 MiB for a
    256 MiB body, 200 MiB for a 130 KB gzip bomb, and an endless one never ended. The status is in by now,
    so a body given up on costs only the sid in the audit."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return b""
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(seconds):
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > _MAX_ANSWER:
                    return b""
                chunks.append(chunk)
        return b"".join(chunks)
    return b""


def _answer(body: bytes) -> dict[str, Any]:
    """The provider's JSON object, or {} for anything else (too large, too deep, not JSON, not an object)."""
    try:
        document = json_bounded.loads(body, max_bytes=_MAX_ANSWER)
    except DecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def transport_error(exc: httpx.HTTPError, host: str, prefix: str = "http") -> TransientError | PermanentError:
    """Map an httpx exception to a bridge error naming its class, the host and what failed (never its text)."""
    detail = talking_to(exc, host)
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(detail, code=f"{prefix}_timeout")
    if isinstance(exc, httpx.TransportError):
        return TransientError(detail, code=f"{prefix}_connection")
    return PermanentError(detail, code=f"{prefix}_error")
