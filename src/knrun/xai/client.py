"""The only code that talks to xAI: chat completions, the live model list, the API key's team,
and the Management API's prepaid balance. Keys live only in the HTTP clients' headers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError

from knrun.errors import ConfigError
from knrun.http import Failure, failure_of, with_retries
from knrun.xai.errors import (
    RETRYABLE_CHAT,
    RETRYABLE_READ,
    AuthFailed,
    BadRequest,
    BadResponse,
    Dropped,
    NotSent,
    Timeout,
    UnreadableReply,
    XaiError,
    classify,
)
from knrun.xai.models import (
    ApiKeyInfo,
    ChatReply,
    LiveModel,
    LiveModelEntry,
    RateHeaders,
    json_of,
    parse_chat,
)

TICKS_PER_CENT = 10**8
CONNECT_TIMEOUT_S = 10.0


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
        auth = {"Authorization": f"Bearer {api_key.get_secret_value()}"}

        def new_lane() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                transport=transport,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=timeout,
                verify=tls,
                headers=auth,
            )

        # Lanes open on first use: a run allowed thousands in flight may need a few dozen.
        self._new_lane = new_lane
        self._lane_count = max(1, max_connections)
        self._lanes: dict[int, httpx.AsyncClient] = {}
        self._api = self._lane(0)
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

    def _lane(self, index: int) -> httpx.AsyncClient:
        index %= self._lane_count
        if (lane := self._lanes.get(index)) is None:
            lane = self._lanes[index] = self._new_lane()
        return lane

    async def aclose(self) -> None:
        for lane in self._lanes.values():
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
        body = chat_body(
            model=model,
            messages=messages,
            temperature=temperature,
            max_completion_tokens=max_completion_tokens,
            response_schema=response_schema,
            schema_name=schema_name,
            reasoning_effort=reasoning_effort,
        )
        headers = {"x-grok-conv-id": conv_id} if conv_id else {}
        seconds = timeout_s or self.chat_timeout_s
        client = self._lane(lane)
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
        reply = parse_chat(json_of(response, "/chat/completions"), model)
        rate = RateHeaders.read(response.headers)
        return reply if rate is None else replace(reply, rate=rate)

    async def language_models(self) -> list[LiveModel]:
        data = await self._read(self._api, "/language-models")
        entries = data.get("models") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise UnreadableReply("xAI /language-models: no 'models' list in the reply")
        try:
            return [LiveModelEntry.model_validate(entry).to_live() for entry in entries]
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

    async def call(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        """One JSON call of the Batch API (`knrun.xai.batch`). An idempotent one (a read, a
        cancel) is retried on any passing trouble; any other only when it provably never
        reached xAI: not on a 5xx, which may come after an add was applied."""
        retry_on = RETRYABLE_READ if idempotent else (NotSent,)
        response = await self._request(self._api, method, path, retry_on=retry_on, **kwargs)
        return json_of(response, path)

    # -- plumbing ---------------------------------------------------------------------------------

    async def _read(self, client: httpx.AsyncClient, path: str) -> Any:
        """A GET that costs nothing, so any passing trouble is retried."""
        response = await self._request(client, "GET", path, retry_on=RETRYABLE_READ)
        return json_of(response, path)

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
        return await with_retries(
            lambda: self._send(client, method, path, deadline_s, **kwargs),
            retry_if=lambda exc: isinstance(exc, retry_on),
            attempts=self._retry_attempts,
            max_s=self._retry_max_s,
            sleep=self._sleep,
        )

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
        except httpx.HTTPError as exc:
            raise _transport_error(path, exc) from None
        if not response.is_success:
            secrets = [key.get_secret_value() for key in self._secrets]
            raise classify(response, secrets=secrets, elapsed_s=time.monotonic() - started)
        return response


def chat_body(
    *,
    model: str,
    messages: list[dict[str, str]],
    temperature: float,
    max_completion_tokens: int,
    response_schema: dict[str, Any],
    schema_name: str,
    reasoning_effort: str | None,
) -> dict[str, Any]:
    """A chat completion request with a JSON-Schema response format: what a live call sends,
    and what a batch request holds."""
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
    return body


def _transport_error(path: str, exc: httpx.HTTPError) -> Exception:
    """A transport failure as the caller must treat it: only NotSent is safe to send again."""
    name = type(exc).__name__
    match failure_of(exc):
        case Failure.NOT_SENT:
            return NotSent(f"xAI {path}: the request was not sent ({name})")
        case Failure.TIMEOUT:
            return Timeout(f"xAI {path}: no reply within the timeout")
        case Failure.DROPPED:
            return Dropped(f"xAI {path}: the connection failed after sending ({name})")
        case Failure.BAD_URL:
            return ConfigError(f"XAI_BASE_URL or XAI_MANAGEMENT_BASE_URL is not a URL: {exc}")
        case Failure.UNDECODABLE:
            return BadResponse(f"xAI {path}: the reply could not be decoded")
        case _:  # too many redirects, and the like
            return BadRequest(f"xAI {path}: {name}")
