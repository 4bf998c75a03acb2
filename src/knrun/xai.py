"""The only code that talks to xAI: chat completions, the live model list, the API key's team,
and the Management API's prepaid balance. Errors become one class per thing the caller must do
differently; they are decided by the message first and the status second, because xAI has sent
"out of credit" as both 429 and 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from knrun.errors import ConfigError, ExitCode, KnrunError
from knrun.httputil import json_body, parse_retry_after, redact, text_excerpt
from knrun.pricing import Usage, usd_per_m_from_live

TICKS_PER_CENT = 10**8
CONNECT_TIMEOUT_S = 10.0

# -- errors ---------------------------------------------------------------------------------------


class XaiError(KnrunError):
    """A failed xAI call. `status` is the HTTP status, when there was a response."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RateLimited(XaiError):
    """Slow down. `window` is "second" or "minute" when the message names one."""

    def __init__(
        self, message: str, status: int | None, retry_after: float | None, window: str | None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after
        self.window = window


class CreditExhausted(XaiError):
    """Out of prepaid credit, over the monthly spending limit, or no credit or licence at all:
    stop the run at once."""

    exit_code = ExitCode.BREAKER


class AuthFailed(XaiError):
    exit_code = ExitCode.USAGE


class ModelUnavailable(XaiError):
    """The model does not exist (retired) or this team cannot use it."""

    exit_code = ExitCode.USAGE


class PromptTooLong(XaiError):
    pass


class BadRequest(XaiError):
    pass


class NotSent(XaiError):
    """The request provably never reached xAI (no connection, or the body was not fully sent):
    nothing can have been billed, so sending it again is safe."""


class ServerError(XaiError):
    """A 5xx answered quickly: the request was refused before any work, so it is retried."""


class PossiblyBilled(XaiError):
    """The request reached xAI and no usable reply came back: xAI bills every request it
    computes, even one the client gave up on, so it may have been billed. Never resent blindly;
    counted at its worst case."""


class Timeout(PossiblyBilled):
    pass


class Dropped(PossiblyBilled):
    """The connection failed after the request was sent, or a slow 5xx came back."""


class BadResponse(PossiblyBilled):
    """A 2xx reply knrun cannot read (no usage): billed, by an amount nobody told us."""


# Chat requests are retried only when they provably cost nothing.
RETRYABLE_CHAT = (NotSent, ServerError)
# Reads (model list, balance, api-key) cost nothing: any passing trouble is worth retrying.
RETRYABLE_READ = (NotSent, ServerError, Timeout, Dropped)
# A 5xx slower than this may have come after the model did the work.
FAST_5XX_S = 10.0

# "Out of money" in every wording seen: credits, billing, payment, licences; 402 too.
_CREDIT = re.compile(r"credit|billing|payment|licen[cs]e|spending limit", re.IGNORECASE)
_AUTH = (
    "incorrect api key",
    "invalid api key",
    "api key is blocked",
    "api key is disabled",
    "team is blocked",
    "no api key",
)
_MODEL = ("does not exist", "model not found")
_TOO_LONG = ("maximum prompt length", "input_too_large", "prompt is too long")
_RATE = ("too many requests", "too many tokens", "rate limit", "at capacity")
_WINDOW = re.compile(r"per (second|minute)", re.IGNORECASE)


def classify(
    response: httpx.Response, *, secrets: Sequence[str] = (), elapsed_s: float = 0.0
) -> XaiError:
    """The error class for a failed response, JSON or not (proxies send HTML pages, and xAI
    answers some 400s and 422s in plain text)."""
    status = response.status_code
    body = json_body(response)
    message = ""
    if isinstance(body, dict):
        detail = body.get("error") or body.get("message") or body.get("code")
        if isinstance(detail, dict):  # OpenAI-style {"error": {"message": ...}} from a proxy
            detail = detail.get("message")
        message = str(detail or "")
    message = redact(message or text_excerpt(response) or response.reason_phrase, secrets)
    text = f"xAI HTTP {status}: {message}"
    lowered = message.lower()
    if status == 402 or _CREDIT.search(message):
        return CreditExhausted(text, status)
    if any(fragment in lowered for fragment in _AUTH) or status == 401:
        return AuthFailed(text, status)
    if any(fragment in lowered for fragment in _MODEL):
        return ModelUnavailable(text, status)
    if any(fragment in lowered for fragment in _TOO_LONG):
        return PromptTooLong(text, status)
    if status == 429 or any(fragment in lowered for fragment in _RATE):
        window = _WINDOW.search(message)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimited(text, status, retry_after, window[1].lower() if window else None)
    if status == 403:
        return AuthFailed(text, status)  # blocked team or key, or a missing permission
    if status == 404:
        return ModelUnavailable(text, status) if "model" in lowered else BadRequest(text, status)
    if status == 408:
        return Timeout(text, status)
    if status >= 500:
        if elapsed_s > FAST_5XX_S:
            return Dropped(f"{text} (after {elapsed_s:.0f} s: it may have been billed)", status)
        return ServerError(text, status)
    return BadRequest(text, status)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateHeaders:
    """The `x-ratelimit-*` headers of a successful reply (observed live, not documented)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None

    @classmethod
    def read(cls, headers: httpx.Headers) -> RateHeaders | None:
        values = {}
        for name in ("limit-requests", "remaining-requests", "limit-tokens", "remaining-tokens"):
            raw = headers.get(f"x-ratelimit-{name}")
            with contextlib.suppress(TypeError, ValueError):
                values[name.replace("-", "_")] = int(float(raw))
        return cls(**values) if values else None


@dataclass(frozen=True)
class ChatReply:
    content: str | None
    finish_reason: str | None
    refusal: str | None
    usage: Usage
    model: str
    rate: RateHeaders | None = None


@dataclass(frozen=True)
class LiveModel:
    """One entry of the live language-model list. Prices in USD per million tokens."""

    id: str
    aliases: tuple[str, ...]
    version: str | None
    fingerprint: str | None
    input: Decimal
    cached_input: Decimal
    output: Decimal
    # A prompt of at least this many tokens is billed at the *_long prices (0: no such tier).
    long_context_threshold: int = 0
    input_long: Decimal = Decimal(0)
    cached_input_long: Decimal = Decimal(0)
    output_long: Decimal = Decimal(0)

    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True)
class ApiKeyInfo:
    team_id: str
    name: str | None
    blocked: bool


class _LiveModelEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    aliases: list[str] = []
    version: str | None = None
    fingerprint: str | None = None
    prompt_text_token_price: int = 0
    cached_prompt_text_token_price: int = 0
    completion_text_token_price: int = 0
    long_context_threshold: int = 0
    prompt_text_token_price_long_context: int = 0
    cached_prompt_text_token_price_long_context: int = 0
    completion_text_token_price_long_context: int = 0

    def to_live(self) -> LiveModel:
        return LiveModel(
            id=self.id,
            aliases=tuple(self.aliases),
            version=self.version,
            fingerprint=self.fingerprint,
            input=usd_per_m_from_live(self.prompt_text_token_price),
            cached_input=usd_per_m_from_live(self.cached_prompt_text_token_price),
            output=usd_per_m_from_live(self.completion_text_token_price),
            long_context_threshold=self.long_context_threshold,
            input_long=usd_per_m_from_live(self.prompt_text_token_price_long_context),
            cached_input_long=usd_per_m_from_live(self.cached_prompt_text_token_price_long_context),
            output_long=usd_per_m_from_live(self.completion_text_token_price_long_context),
        )


def find_live(models: Sequence[LiveModel], name: str) -> LiveModel | None:
    """The live model whose id or alias is `name`."""
    return next((model for model in models if name in model.names()), None)


# -- the client -----------------------------------------------------------------------------------


class XaiClient:
    """One client per run. Keys live only in the HTTP clients' headers, never in messages.

    API requests go through one single-connection pool per lane (the runner's worker index),
    not one shared pool: httpcore's pool scans, and polls the socket of, every connection on
    each request and release, so a shared pool costs O(connections) syscalls per request
    (encode/httpcore#924 and #1035, unmerged). At 50 connections that was 5.7 ms of CPU per
    request against 0.9 ms with lanes (bench/runner_cpu.py)."""

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str = "https://api.x.ai/v1",
        management_key: SecretStr | None = None,
        management_base_url: str = "https://management-api.x.ai",
        transport: httpx.AsyncBaseTransport | None = None,
        management_transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 50,
        timeout_s: float = 30.0,
        chat_timeout_s: float = 600.0,
        retry_attempts: int = 3,
        retry_max_s: float = 300.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._secrets = [key for key in (api_key, management_key) if key is not None]
        tls = httpx.create_ssl_context()  # loaded once, shared by every lane
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        one_connection = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._lanes = [
            httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                transport=transport,
                limits=one_connection,
                timeout=timeout,
                verify=tls,
                headers={"Authorization": f"Bearer {api_key.get_secret_value()}"},
            )
            for _ in range(max(1, max_connections))
        ]
        self._api = self._lanes[0]
        self._management: httpx.AsyncClient | None = None
        if management_key is not None:
            self._management = httpx.AsyncClient(
                base_url=management_base_url.rstrip("/"),
                transport=management_transport or transport,
                timeout=timeout,
                verify=tls,
                headers={"Authorization": f"Bearer {management_key.get_secret_value()}"},
            )
        self.chat_timeout_s = chat_timeout_s
        self._retry_attempts = retry_attempts
        self._retry_max_s = retry_max_s
        self._sleep = sleep

    @property
    def has_management_key(self) -> bool:
        return self._management is not None

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.aclose()
        if self._management is not None:
            await self._management.aclose()

    # -- calls ------------------------------------------------------------------------------------

    async def chat(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        temperature: float,
        max_completion_tokens: int,
        response_schema: dict[str, Any],
        schema_name: str,
        reasoning_effort: str | None = None,
        conv_id: str | None = None,
        timeout_s: float | None = None,
        lane: int = 0,
    ) -> ChatReply:
        """One chat completion with a JSON-Schema response format. Retried only when the
        failure proves nothing was billed (no connection; a fast 5xx); a timeout or a dropped
        connection after sending raises `PossiblyBilled`, never a second request.
        Give each concurrent caller its own `lane`."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "max_completion_tokens": max_completion_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": response_schema},
            },
        }
        if reasoning_effort is not None:  # grok-4.20 and older refuse the parameter outright
            body["reasoning_effort"] = reasoning_effort
        headers = {"x-grok-conv-id": conv_id} if conv_id else {}
        seconds = timeout_s or self.chat_timeout_s
        client = self._lanes[lane % len(self._lanes)]
        response = await self._request(
            client,
            "POST",
            "/chat/completions",
            retry_on=RETRYABLE_CHAT,
            deadline_s=seconds,
            json=body,
            headers=headers,
            timeout=httpx.Timeout(seconds, connect=CONNECT_TIMEOUT_S),
        )
        reply = _parse_chat(_json_of(response, "/chat/completions"), model)
        rate = RateHeaders.read(response.headers)
        return reply if rate is None else replace(reply, rate=rate)

    async def language_models(self) -> list[LiveModel]:
        data = await self._read(self._api, "/language-models")
        entries = data.get("models") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise UnreadableReply("xAI /language-models: no 'models' list in the reply")
        try:
            return [_LiveModelEntry.model_validate(entry).to_live() for entry in entries]
        except ValidationError as exc:
            raise UnreadableReply(
                f"xAI /language-models: unexpected entry: {exc.errors()[0]['msg']}"
            ) from None

    async def api_key_info(self) -> ApiKeyInfo:
        data = await self._read(self._api, "/api-key")
        if not isinstance(data, dict) or not data.get("team_id"):
            raise UnreadableReply("xAI /api-key: no team_id in the reply")
        blocked = any(
            data.get(flag) for flag in ("team_blocked", "api_key_blocked", "api_key_disabled")
        )
        return ApiKeyInfo(team_id=str(data["team_id"]), name=data.get("name"), blocked=blocked)

    async def team(self, configured: str | None) -> str:
        """The team the Management API calls need: XAI_TEAM_ID, else the API key's own."""
        return configured or (await self.api_key_info()).team_id

    async def prepaid_balance_ticks(self, team_id: str) -> int:
        """Remaining prepaid credit in ticks. The ledger counts purchases negative, so the
        remaining amount is minus the total, in cents."""
        if self._management is None:
            raise AuthFailed("XAI_MANAGEMENT_KEY is not set: the prepaid balance cannot be read")
        data = await self._read(self._management, f"/v1/billing/teams/{team_id}/prepaid/balance")
        try:
            cents = int(str(data["total"]["val"]))
        except (KeyError, TypeError, ValueError):
            raise UnreadableReply("xAI prepaid balance: no total.val in the reply") from None
        return -cents * TICKS_PER_CENT

    async def spending_limit_ticks(self, team_id: str) -> int | None:
        """The team's monthly spending limit past prepaid credit, if any.

        The reply's shape comes from community clients, not xAI's docs:
        {"spendingLimits": {"effectiveSl": {"val": "<cents>"}, "effectiveHardSl": {...}}}.
        Read defensively; None when absent."""
        if self._management is None:
            raise AuthFailed("XAI_MANAGEMENT_KEY is not set: spending limits cannot be read")
        path = f"/v1/billing/teams/{team_id}/postpaid/spending-limits"
        data = await self._read(self._management, path)
        limits = data.get("spendingLimits") if isinstance(data, dict) else None
        values = []
        for key in ("effectiveHardSl", "effectiveSl"):
            entry = limits.get(key) if isinstance(limits, dict) else None
            if isinstance(entry, dict):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    values.append(int(str(entry["val"])))
        return max(values) * TICKS_PER_CENT if values else None

    # -- plumbing ---------------------------------------------------------------------------------

    async def _read(self, client: httpx.AsyncClient, path: str) -> Any:
        """A GET that costs nothing, so any passing trouble is retried."""
        response = await self._request(client, "GET", path, retry_on=RETRYABLE_READ)
        return _json_of(response, path)

    async def _request(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        retry_on: tuple[type[XaiError], ...],
        deadline_s: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        # Nearly every call succeeds first time, so the retry machinery is built only after a
        # retryable failure: back off once, then up to `retry_attempts - 1` more tries.
        try:
            return await self._send(client, method, path, deadline_s, **kwargs)
        except retry_on:
            if self._retry_attempts <= 1:
                raise
        await self._sleep(random.uniform(0, 1))  # noqa: S311 - jitter, not secrets
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry_attempts - 1) | stop_after_delay(self._retry_max_s),
            wait=wait_random_exponential(multiplier=2, max=20),
            retry=retry_if_exception_type(retry_on),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send(client, method, path, deadline_s, **kwargs)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        deadline_s: float | None,
        **kwargs: Any,
    ) -> httpx.Response:
        started = time.monotonic()
        # httpx's timeouts bound each read, not the whole reply; the deadline bounds the whole
        # exchange (and stands in for timeouts with transports that have none, like ASGI).
        deadline = None if deadline_s is None else deadline_s + CONNECT_TIMEOUT_S
        try:
            async with asyncio.timeout(deadline):
                response = await client.request(method, path, **kwargs)
        except TimeoutError:
            raise Timeout(f"xAI {path}: no reply within {deadline_s:g} s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSent(f"xAI {path}: could not connect ({type(exc).__name__})") from None
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            raise NotSent(f"xAI {path}: the request was not sent ({type(exc).__name__})") from None
        except httpx.TimeoutException:
            raise Timeout(f"xAI {path}: no reply within the timeout") from None
        except httpx.TransportError as exc:
            raise Dropped(
                f"xAI {path}: the connection failed after sending ({type(exc).__name__})"
            ) from None
        except httpx.InvalidURL as exc:
            raise ConfigError(
                f"XAI_BASE_URL or XAI_MANAGEMENT_BASE_URL is not a URL: {exc}"
            ) from None
        except httpx.DecodingError:
            raise BadResponse(f"xAI {path}: the reply could not be decoded") from None
        except httpx.HTTPError as exc:  # too many redirects, and the like
            raise BadRequest(f"xAI {path}: {type(exc).__name__}") from None
        if not response.is_success:
            secrets = [key.get_secret_value() for key in self._secrets]
            raise classify(response, secrets=secrets, elapsed_s=time.monotonic() - started)
        return response


class UnreadableReply(XaiError):
    """A read-only endpoint answered something knrun cannot use (nothing was billed)."""


def _json_of(response: httpx.Response, path: str) -> Any:
    data = json_body(response)
    if data is None:
        problem = f"xAI {path}: reply is not JSON: {text_excerpt(response, 120)}"
        raise BadResponse(problem) if path == "/chat/completions" else UnreadableReply(problem)
    return data


def _parse_chat(data: Any, requested_model: str) -> ChatReply:
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data["usage"]
        prompt = int(usage["prompt_tokens"])
        completion = int(usage.get("completion_tokens") or 0)
        total = usage.get("total_tokens")
        details_in = usage.get("prompt_tokens_details") or {}
        details_out = usage.get("completion_tokens_details") or {}
        # Reasoning tokens are billed as output but sit outside completion_tokens: trust
        # total - prompt - completion when the total is there, as xAI's bill does.
        reasoning = (
            int(total) - prompt - completion
            if total is not None
            else int(details_out.get("reasoning_tokens") or 0)
        )
        billed = usage.get("cost_in_usd_ticks")
        return ChatReply(
            content=message.get("content"),
            finish_reason=choice.get("finish_reason"),
            refusal=message.get("refusal"),
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=int(details_in.get("cached_tokens") or 0),
                reasoning_tokens=max(reasoning, 0),
                billed_ticks=None if billed is None else int(billed),
            ),
            model=str(data.get("model") or requested_model),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise BadResponse(
            f"xAI chat reply lacks choices or usage: {json.dumps(data)[:200]}"
        ) from None
