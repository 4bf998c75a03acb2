"""Chat completions: the request body (live and batch send the same), and the call, over a lean
connection of its own per lane (`wire`) or through httpx when a transport stands in (tests) or
a proxy is set. Retried only when the failure proves nothing was billed."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from knrun.http import Failure, with_retries
from knrun.xai.errors import (
    RETRYABLE_CHAT,
    BadResponse,
    Dropped,
    NotSent,
    Timeout,
    XaiError,
    classify,
)
from knrun.xai.models import ChatReply, RateHeaders, json_of, parse_chat
from knrun.xai.wire import Origin, Reply, Wire, WireError

CONNECT_TIMEOUT_S = 10.0


class ChatCalls:
    """Mixed into `XaiClient`, which supplies its lanes, retry settings and secrets."""

    chat_timeout_s: float
    _origin: Origin | None
    _wires: dict[int, Wire]
    _api_key: SecretStr
    _tls: ssl.SSLContext
    _lane_count: int
    _retry_attempts: int
    _retry_max_s: float
    _sleep: Callable[[float], Awaitable[None]]
    _secrets: list[SecretStr]

    if TYPE_CHECKING:  # XaiClient's

        def _lane(self, index: int) -> httpx.AsyncClient: ...

        async def _request(
            self,
            client: httpx.AsyncClient,
            method: str,
            path: str,
            *,
            retry_on: tuple[type[XaiError], ...],
            deadline_s: float | None = None,
            **kwargs: Any,
        ) -> httpx.Response: ...

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
        if self._origin is not None:
            return await self._chat_on_wire(lane, body, headers, seconds, model)
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

    async def _chat_on_wire(
        self,
        lane: int,
        body: dict[str, Any],
        headers: dict[str, str],
        seconds: float,
        model: str,
    ) -> ChatReply:
        assert self._origin is not None
        index = lane % self._lane_count
        if (wire := self._wires.get(index)) is None:
            auth = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
            wire = self._wires[index] = Wire(self._origin, auth, self._tls)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

        async def send() -> Reply:
            started = time.monotonic()
            try:
                reply = await wire.post(
                    "/chat/completions",
                    payload,
                    headers,
                    connect_timeout_s=CONNECT_TIMEOUT_S,
                    reply_timeout_s=seconds,
                )
            except TimeoutError:
                wire.close()
                raise Timeout(f"xAI /chat/completions: no reply within {seconds:g} s") from None
            except WireError as exc:
                raise _wire_error(exc) from None
            if not 200 <= reply.status < 300:
                response = httpx.Response(reply.status, headers=reply.headers, content=reply.body)
                secrets = [key.get_secret_value() for key in self._secrets]
                raise classify(response, secrets=secrets, elapsed_s=time.monotonic() - started)
            return reply

        reply = await with_retries(
            send,
            retry_if=lambda exc: isinstance(exc, RETRYABLE_CHAT),
            attempts=self._retry_attempts,
            max_s=self._retry_max_s,
            sleep=self._sleep,
        )
        try:
            data = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError):
            excerpt = reply.body[:120].decode("utf-8", errors="replace")
            raise BadResponse(f"xAI /chat/completions: reply is not JSON: {excerpt}") from None
        parsed = parse_chat(data, model)
        rate = RateHeaders.read(reply.headers)
        return parsed if rate is None else replace(parsed, rate=rate)


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


def proxied() -> bool:
    """Whether a proxy is configured the way httpx reads it (`trust_env`)."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    return any(os.environ.get(name) or os.environ.get(name.lower()) for name in names)


def _wire_error(exc: WireError) -> Exception:
    match exc.failure:
        case Failure.NOT_SENT:
            return NotSent(f"xAI /chat/completions: the request was not sent ({exc})")
        case Failure.DROPPED:
            return Dropped(f"xAI /chat/completions: the connection failed after sending ({exc})")
        case _:
            return BadResponse(f"xAI /chat/completions: {exc}")
