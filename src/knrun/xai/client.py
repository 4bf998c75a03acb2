"""The only code that talks to xAI: one client per run, with its connections (a lane per worker),
its retry policy, and the calls of the Batch API (`call`); chat is `chat.py`'s, the account's
reads `account.py`'s. Keys live only in the HTTP clients' headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import SecretStr

from knrun.errors import ConfigError
from knrun.http import Failure, failure_of, with_retries
from knrun.xai.account import TICKS_PER_CENT, AccountCalls
from knrun.xai.chat import CONNECT_TIMEOUT_S, ChatCalls, chat_body, proxied
from knrun.xai.errors import (
    RETRYABLE_READ,
    BadRequest,
    BadResponse,
    Dropped,
    NotSent,
    Timeout,
    XaiError,
    classify,
)
from knrun.xai.models import (
    json_of,
)
from knrun.xai.wire import Origin, Wire

__all__ = ["CONNECT_TIMEOUT_S", "TICKS_PER_CENT", "XaiClient", "chat_body"]


class XaiClient(ChatCalls, AccountCalls):
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
        # Chat goes over lean connections of its own (`wire`), but through httpx when a
        # transport stands in (tests) or a proxy is set (httpx honours it; the wire does not).
        self._origin = None if transport is not None or proxied() else Origin(base_url)
        self._wires: dict[int, Wire] = {}
        self._api_key, self._tls = api_key, tls
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
        for wire in self._wires.values():
            wire.close()
        for lane in self._lanes.values():
            await lane.aclose()
        if self._management is not None:
            await self._management.aclose()

    # -- calls ------------------------------------------------------------------------------------

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
